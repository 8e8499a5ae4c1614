"""Offline comparison report of finished (or crashed) runs: one table row per attention variant,
mean ± std over seeds (or the fraction of runs above a declared threshold) with a test against a
baseline (Welch's t, Fisher's exact or log-rank, by column; Holm-corrected), and four figures.

    python -m outlier_lab.report DIR [DIR ...] [--out OUT] [--baseline softmax]

Each DIR is a run directory or a sweep directory holding run directories (searched down to
depth 3 for folders with ``.hydra/config.yaml``, ``metrics.csv`` or ``FAILED``). Every run is
read from ``.hydra/config.yaml``, ``metrics.csv`` and ``summary.json`` (names: docs/metrics.md,
docs/compression.md); a run without a final validation in its summary is "crashed/unfinished":
its curves are drawn, it stays out of the table and is listed with the reason. Writes
``OUT/report.md`` with ``loss_curves.png``, ``outliers_vs_step.png``, ``layer_profile.png`` and
``extreme_tokens.png`` next to it (default OUT: ``DIR/report`` for one DIR, ``./report`` for several).

An input may also be a per-run CSV (``--runs-csv`` writes one; ``run_table``): its runs enter
the table as the directories' do, and draw no figures (the CSV holds no curves).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from outlier_lab import figure_style
from outlier_lab.report.figures import make_figures
from outlier_lab.report.load import MAX_DEPTH, Run, find_runs, load_runs
from outlier_lab.report.render import markdown_report, rich_tables
from outlier_lab.report.run_table import RunTableError, read_runs_csv, write_runs_csv
from outlier_lab.report.table import Table, build_table, group_runs


def read_inputs(inputs: list[Path], skip: tuple[Path, ...] = ()) -> list[Run]:
    """The runs of run/sweep directories and per-run CSVs, in the order given."""
    runs = load_runs([p for p in inputs if p.is_dir()], skip=skip)
    return runs + [run for p in inputs if p.is_file() for run in read_runs_csv(p)]


def write_report(dirs: list[Path], out: Path, baseline: str = "softmax", panels: list[str] | None = None,
                 runs_csv: Path | None = None, last: list[str] = ()) -> tuple[Path, Table, list[Run]]:
    """Read every run under dirs (directories or per-run CSVs), write OUT/report.md and the PNGs;
    returns (path, table, runs). panels: glob patterns of the metric keys drawn in
    outliers_vs_step.png (None: all). runs_csv: also write the per-run CSV there, with the last
    value of the curves matching ``last``."""
    runs = read_inputs(dirs, skip=(out.resolve(),))
    if runs_csv is not None:
        write_runs_csv(runs, runs_csv, last)
    groups = group_runs(runs, baseline)
    table = build_table(groups, baseline)
    out.mkdir(parents=True, exist_ok=True)
    figures = make_figures(groups, panels) if any(r.curves for r in runs) else {}
    for name, fig in figures.items():
        figure_style.save(fig, out / f"{name}.png")
    path = out / "report.md"
    path.write_text(markdown_report(runs, table, dirs, baseline, tuple(figures)), encoding="utf-8")
    return path, table, runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m outlier_lab.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("dirs", nargs="+", type=Path, metavar="DIR", help="run or sweep directories, or per-run CSVs")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: DIR/report for one DIR, ./report for several)")
    parser.add_argument("--baseline", default="softmax", help="what the tests compare against: a variant (softmax), or KEY=VALUE of another "
                             "swept key (optim=adamw: each optimizer against AdamW, per variant)")
    parser.add_argument("--panels", nargs="+", metavar="PATTERN", default=None,
                        help="draw only these panel metrics over steps (glob patterns of their keys, "
                             "e.g. 'outliers/domain/*'); default: every declared panel")
    parser.add_argument("--runs-csv", type=Path, default=None, metavar="PATH",
                        help="also write one row per run (identity, summary numbers) to this CSV")
    parser.add_argument("--last", nargs="+", metavar="PATTERN", default=[],
                        help="with --runs-csv: keep the last value of the metrics.csv curves matching these globs")
    args = parser.parse_args(argv)
    if args.last and args.runs_csv is None:
        parser.error("--last needs --runs-csv (it chooses the curves whose last value goes into that CSV)")

    from rich.console import Console

    console = Console()
    if not console.is_terminal:  # a pipe or a log file: don't squeeze the tables into 80 columns
        console = Console(width=max(console.width, 160))
    missing = [d for d in args.dirs if not (d.is_dir() or (d.is_file() and d.suffix == ".csv"))]
    for d in missing:
        console.print(f"[red]not a directory or a per-run CSV:[/] {d}")
    dirs = [d for d in args.dirs if d not in missing]
    out = args.out or (dirs[0] / "report" if len(args.dirs) == 1 and dirs and dirs[0].is_dir() else Path("report"))
    if not any(d.is_file() or find_runs(d, skip=(out.resolve(),)) for d in dirs):
        console.print("[red]no run directories found[/] (folders with .hydra/config.yaml or metrics.csv, "
                      f"depth <= {MAX_DEPTH})")
        return 1
    try:
        path, table, runs = write_report(dirs, out, args.baseline, args.panels, args.runs_csv, args.last)
    except RunTableError as exc:
        console.print(f"[red]{exc}[/]", highlight=False)
        return 1
    for part in rich_tables(table):
        console.print(part)
    tested = sum(c.comparison is not None and c.comparison.tested for c in table.cells.values())
    console.print(f"bold: best mean (or fraction) per column; * p < 0.05, ** p < 0.01 against the baseline "
                  f"{args.baseline!r} (both with >= 2 runs), Holm-corrected over the {tested} tests of the table; "
                  "the test: t Welch, f Fisher (X > θ: runs above θ), l log-rank (tokens to target, misses "
                  "censored). Every comparison: report.md", highlight=False)
    broken = [r for r in runs if r.problems]
    if broken:
        console.print(f"[yellow]{len(broken)} broken run(s):[/]")
        for run in broken:
            console.print(f"  {run.name}: {'; '.join(run.problems)}", markup=False, highlight=False)
    console.print(f"Report: {path}", highlight=False)
    return 0
