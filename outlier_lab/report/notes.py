"""What the marks mean, under the table: the tests, Holm's family (how many comparisons, which),
the comparisons without a test; and the list of every comparison with its uncorrected and
corrected p and, for Welch's test, Mann-Whitney U and the bootstrap interval beside it."""

from __future__ import annotations

import math

from outlier_lab.report.compare import MIN_RUNS, TESTS, Comparison
from outlier_lab.report.stats import ALPHA, BOOTSTRAP_SEED, CONFIDENCE, SIGNIFICANCE
from outlier_lab.report.table import Column, Table


def comparisons(table: Table) -> list[tuple[str, Column, Comparison]]:
    """(group label, column, comparison) of every cell compared with its baseline, by column."""
    return [(group.label, column, cell.comparison) for column in table.columns for group in table.groups
            if (cell := table.cells[group.label, column.key]).comparison is not None]


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("*", "\\*")


def _p(p: float) -> str:
    if math.isnan(p):
        return "—"
    return "< 0.0001" if p < 1e-4 else f"{p:.4f}" if p < 0.001 else f"{p:.3f}"


def family_lines(table: Table) -> list[str]:
    """Holm's family named: the variants that share a list of tested columns, then that list."""
    family = [(label, column) for label, column, c in comparisons(table) if c.tested]
    if not family:
        return ["Holm's family: empty (no comparison has a p-value)."]
    columns_of: dict[str, list[str]] = {}
    for label, column in family:
        columns_of.setdefault(label, []).append(f"{_escape(column.header)} {TESTS[column.test][0]}")
    shared: dict[tuple[str, ...], list[str]] = {}
    for label, headers in columns_of.items():
        shared.setdefault(tuple(headers), []).append(label)
    parts = [f"{', '.join(_escape(label) for label in labels)} × {len(headers)} ({', '.join(headers)})"
             for headers, labels in shared.items()]
    return [f"Holm's family: the {len(family)} comparisons with a p-value in this table: " + "; ".join(parts) + "."]


def significance_notes(table: Table, baseline: str) -> list[str]:
    """The Markdown lines under the table: the tests and marks, the family, the untested comparisons."""
    if table.baseline is None:
        return [f"Significance: no baseline: no run of `{baseline}` was found (`--baseline`)."]
    strict, loose = SIGNIFICANCE[0][0], SIGNIFICANCE[1][0]
    lines = [
        f"Significance against the baseline `{baseline}`, two-sided, only where both have at least {MIN_RUNS} "
        f"runs, by each column's test: {TESTS['welch'][0]} {TESTS['welch'][1]}; {TESTS['fisher'][0]} "
        f"{TESTS['fisher'][1]} on the runs whose value is above the column's threshold (\"X > θ\", declared "
        f"with the metric; the cell: yes / runs [exact Clopper-Pearson {CONFIDENCE:.0%} interval]); "
        f"{TESTS['logrank'][0]} {TESTS['logrank'][1]} on the tokens to the target, a run that did not reach it "
        f"censored at its last step. Marks are Holm-corrected over the whole table (family-wise α = {ALPHA:g}): "
        f"\\* corrected p < {loose:g}, \\*\\* corrected p < {strict:g}. No variance (neither group varies): "
        "no test, no mark.",
        "",
    ] + family_lines(table)
    untested = [f"{_escape(label)} × {_escape(column.header)} ({c.note})"
                for label, column, c in comparisons(table) if not c.tested]
    if untested:
        lines += ["", "No test: " + "; ".join(untested) + "."]
    return lines


def _difference(c: Comparison) -> str:
    if c.counts:
        return c.counts
    if math.isnan(c.difference):
        return "—"
    low, high = c.interval
    interval = "" if math.isnan(low) else f" [{low:.4g}, {high:.4g}]"
    return f"{c.difference:+.4g}{interval}"


def comparisons_section(table: Table) -> list[str]:
    """Every comparison: its test, p before and after Holm, and for Welch's test the checks
    (Mann-Whitney U's p, uncorrected; the bootstrap interval of the difference of means)."""
    rows = comparisons(table)
    if not rows:
        return []
    lines = [
        "### Comparisons with the baseline",
        "",
        f"Each cell against its baseline. p: the column's test, uncorrected; Holm p: corrected over the "
        f"table (this gives the mark). Beside Welch's test, as checks that give no mark: Mann-Whitney U's "
        f"two-sided p (uncorrected) and the difference of means with its {CONFIDENCE:.0%} bootstrap interval "
        f"(BCa, groups resampled separately, seed {BOOTSTRAP_SEED}; with a handful of seeds it is too narrow: "
        "it cannot see beyond the seeds' own spread). For Fisher's and the log-rank test: the counts.",
        "",
        "| variant | column | test | p | Holm p | Mann-Whitney p | difference [bootstrap interval] or counts |",
        "|:---|:---|:---|---:|---:|---:|---:|",
    ]
    for label, column, c in rows:
        p = _p(c.p) if c.tested else c.note
        mark = (" " + "\\*" * len(c.mark)) if c.mark else ""
        lines.append(f"| {_escape(label)} | {_escape(column.header)} | {TESTS[c.test][1]} | {p} | "
                     f"{_p(c.p_holm)}{mark} | {_p(c.mann_whitney)} | {_difference(c)} |")
    return lines + [""]
