"""The report as text: ``report.md`` (the table, the figures, the run list, the broken runs)
and the same table for the terminal, split by section so that each part fits its width.
"""

from __future__ import annotations

import math
from datetime import datetime
from pathlib import Path

from outlier_lab.metrics.registry import SECTIONS
from outlier_lab.report.figures import FIGURES
from outlier_lab.report.load import Run
from outlier_lab.report.notes import comparisons_section, significance_notes
from outlier_lab.report.stats import clopper_pearson
from outlier_lab.report.table import Cell, Column, Table

SECTION_TITLES = {"compress": "compression"}  # the others are titled by their own name


def format_number(x: float, kind: str = "num", digits: int = 4) -> str:
    if x is None or math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if kind == "tokens":
        digits = min(digits, 3)
        for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
            if abs(x) >= scale:
                return f"{x / scale:.{digits}g}{suffix}"
        return f"{x:.{digits}g}"
    if x == 0:
        return "0"
    if 1e-3 <= abs(x) < 1e5:
        text = f"{x:.{digits}g}"
        return f"{x:.0f}" if "e" in text else text  # 141.4 to 2 digits: "141", not "1.4e+02"
    mantissa, exponent = f"{x:.{digits - 1}e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def format_cell(cell: Cell, kind: str = "num") -> str:
    """"mean ± std" (n >= 2), "mean (n=1)"; for a yes/no column "yes/runs [low, high]" with the
    Clopper-Pearson interval of the fraction; "(k/n)" when only k of the n complete runs have it."""
    if not cell.n:
        return "—"
    if cell.binary_above is not None:
        low, high = clopper_pearson(cell.yes, cell.n)
        text = f"{cell.yes}/{cell.n} [{format_number(low, digits=2)}, {format_number(high, digits=2)}]"
        return text + (f" ({cell.n}/{cell.expected})" if cell.n < cell.expected else "")
    text = format_number(cell.mean, kind)
    if cell.n >= 2 and not math.isnan(cell.std):
        std = 0.0 if cell.std <= 1e-9 * abs(cell.mean) else cell.std  # rounding noise of equal values
        text += f" ± {format_number(std, kind, digits=2)}"
    if cell.n < cell.expected:
        text += f" ({cell.n}/{cell.expected})"
    elif cell.n == 1:
        text += " (n=1)"
    return text


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("*", "\\*")


def table_rows(table: Table, columns: list[Column]):
    """Per group: (label, seeds, [(cell text, best, Holm-corrected mark, the test's letter) per
    column]), the content that the Markdown and the terminal tables dress each in their own way."""
    for group in table.groups:
        label = group.label + (" (baseline)" if group is table.baseline_of(group) else "")
        seeds = str(len(group.complete)) + (f" (+{len(group.broken)} broken)" if group.broken else "")
        cells = [table.cells[group.label, column.key] for column in columns]
        marks = [(c.comparison.mark, c.comparison.letter) if c.comparison and c.comparison.mark else ("", "")
                 for c in cells]
        yield label, seeds, [(format_cell(cell, column.kind), cell.best, *mark)
                             for cell, column, mark in zip(cells, columns, marks)]


def markdown_table(table: Table) -> str:
    headers = ["variant", "seeds"] + [c.header for c in table.columns]
    lines = ["| " + " | ".join(_md_escape(h) for h in headers) + " |",
             "|" + "|".join([":---", "---:"] + ["---:"] * len(table.columns)) + "|"]
    for label, seeds, cells in table_rows(table, table.columns):
        row = [_md_escape(label), seeds]
        for text, best, mark, letter in cells:
            text = f"**{text}**" if best else text
            row.append(text + (" " + "\\*" * len(mark) + letter if mark else ""))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def rich_tables(table: Table) -> list:
    """The table for the terminal, one part per section (convergence, outliers, compression)
    so that each part fits a terminal's width without folding its cells."""
    from rich.table import Table as RichTable
    from rich.text import Text

    parts = []
    for section in SECTIONS:
        columns = [c for c in table.columns if c.key.split("/", 1)[0] == section]
        if not columns:
            continue
        out = RichTable(title=f"{SECTION_TITLES.get(section, section)}: mean ± std over seeds (lower is better)",
                        title_justify="left")
        out.add_column("variant", no_wrap=True)
        out.add_column("seeds", justify="right", no_wrap=True)
        for column in columns:
            out.add_column(column.header, justify="right", no_wrap=True)
        for label, seeds, cells in table_rows(table, columns):
            row = [Text(label), Text(seeds)]
            for text, best, mark, letter in cells:
                row.append(Text(text, style="bold" if best else ""))
                if mark:
                    row[-1].append(" " + mark + letter, style="yellow")
            out.add_row(*row)
        parts.append(out)
    return parts


def _steps_text(run: Run) -> str:
    done = "—" if run.steps_done is None else str(run.steps_done)
    return done if run.max_steps is None else f"{done}/{run.max_steps}"


def _duplicate_seeds(runs: list[Run]) -> list[str]:
    counts: dict[tuple, int] = {}
    for run in runs:
        if run.complete and run.seed is not None:
            key = (run.variant, run.model, run.seed)
            counts[key] = counts.get(key, 0) + 1
    return [f"{v} seed {s} ×{n}" for (v, _, s), n in counts.items() if n > 1]


def markdown_report(runs: list[Run], table: Table, dirs: list[Path], baseline: str,
                    figures: tuple[str, ...] = tuple(FIGURES)) -> str:
    """report.md; ``figures``: the figures written beside it (none for runs read from a CSV)."""
    complete = sum(r.complete for r in runs)
    broken = [r for r in runs if r.problems]
    lines = [
        "# Attention-variant comparison",
        "",
        f"Generated {datetime.now():%Y-%m-%d %H:%M} from {', '.join(f'`{d}`' for d in dirs)}: "
        f"{len(runs)} runs ({complete} complete, {len(runs) - complete} failed or unfinished), "
        f"{len(table.groups)} variants.",
        "",
        "## Results",
        "",
        "Mean ± std over the complete runs of each variant (std with ddof=1; a single run shows its "
        "value and \"(n=1)\"; \"(k/n)\": only k of the n complete runs have that value); a column "
        "\"X > θ\" counts the runs whose value is above θ instead. "
        "Lower is better in every column; **bold** marks the best mean (or fraction) of each column. "
        "Crashed/unfinished runs are left out of the table (see the seeds column and the list below).",
        "",
    ]
    if table.columns:
        lines += [markdown_table(table), ""]
    else:
        lines += ["No complete run has any summary value: no table.", ""]
    lines += significance_notes(table, baseline)
    if table.tokens_target is not None:
        lines += ["", f"Tokens to val loss ≤ {table.tokens_target}: the lowest loss target that every "
                  "variant reached in at least one run (`convergence/tokens_to_X`); the mean is over "
                  "the runs that reached it."]
    if table.columns:
        lines += ["", "Columns: " + "; ".join(f"{c.header} = `{c.key}`" for c in table.columns) + "."]
    if table.baseline is not None:
        lines += [""] + comparisons_section(table)
    lines += ["", "## Figures", ""]
    if not figures:
        lines += ["None: the runs were read from per-run CSVs, which hold no curves.", ""]
    for name in figures:
        heading, alt = FIGURES[name]
        lines += [f"### {heading}", "", f"![{alt}]({name}.png)", ""]
    lines += [
        "## Runs",
        "",
        "| run | variant | model | seed | steps | status |",
        "|:---|:---|:---|---:|---:|:---|",
    ]
    for run in runs:
        lines.append(f"| `{run.name}` | {_md_escape(run.variant)} | {_md_escape(str(run.model or '—'))} | "
                     f"{'—' if run.seed is None else run.seed} | {_steps_text(run)} | {run.status} |")
    lines += ["", "## Broken runs", ""]
    if broken:
        for run in broken:
            lines.append(f"- `{run.name}` ({run.status}): {'; '.join(run.problems)}  \n  `{run.path}`")
    else:
        lines.append("None.")
    duplicates = _duplicate_seeds(runs)
    if duplicates:
        lines += ["", "Note: several complete runs share a seed (" + ", ".join(duplicates)
                  + "); they all count as separate samples."]
    return "\n".join(lines) + "\n"
