"""Offline comparison report of finished (or crashed) runs: one table row per attention
variant, mean ± std over seeds with Welch's t-test against a baseline, and three figures
(``python -m outlier_lab.report``; usage in ``cli``).

By concern: ``load`` finds and reads runs, ``declarations`` takes the columns and panels from
the metric declarations, ``table`` groups runs into the table, ``stats`` tests against the
baseline, ``figures`` draws, ``render`` writes the Markdown and terminal tables, ``cli``
ties them together.
"""

from outlier_lab.report.cli import main, write_report
from outlier_lab.report.declarations import column_metrics, declared_key, panel_metrics, ratio_columns
from outlier_lab.report.figures import FIGURES, aggregate, make_figures
from outlier_lab.report.load import Run, find_runs, load_runs, read_run
from outlier_lab.report.render import format_cell, format_number, markdown_report, markdown_table, rich_tables
from outlier_lab.report.stats import significance_mark, welch_t_test
from outlier_lab.report.table import Cell, Column, Group, Table, build_table, choose_tokens_target, group_runs

__all__ = [
    "FIGURES", "Cell", "Column", "Group", "Run", "Table", "aggregate", "build_table", "choose_tokens_target",
    "column_metrics", "declared_key", "find_runs", "format_cell", "format_number", "group_runs", "load_runs",
    "main", "make_figures", "markdown_report", "markdown_table", "panel_metrics", "ratio_columns", "read_run",
    "rich_tables", "significance_mark", "welch_t_test", "write_report",
]
