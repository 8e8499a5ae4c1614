"""Offline comparison report of finished (or crashed) runs: one table row per attention
variant, mean ± std over seeds (or the fraction of runs above a declared threshold) with a test
against a baseline, Holm-corrected over the table, and four figures (``python -m outlier_lab.report``;
usage in ``cli``).

By concern: ``load`` finds and reads runs, ``declarations`` takes the columns and panels from
the metric declarations, ``table`` groups runs into the table, ``stats`` holds the tests (all
scipy's) and Holm's correction, ``compare`` picks each column's test and corrects the table,
``notes`` says what the marks mean and lists every comparison, ``figures`` draws, ``render``
writes the Markdown and terminal tables, ``cli`` ties them together.
"""

from outlier_lab.report.cli import main, write_report
from outlier_lab.report.compare import Comparison, compare
from outlier_lab.report.declarations import column_metrics, declared_key, panel_metrics, ratio_columns
from outlier_lab.report.figures import FIGURES, aggregate, make_figures
from outlier_lab.report.load import Run, find_runs, load_runs, read_run
from outlier_lab.report.render import format_cell, format_number, markdown_report, markdown_table, rich_tables
from outlier_lab.report.stats import (bootstrap_mean_difference, clopper_pearson, fisher_test, holm, logrank_test,
                                      mann_whitney, significance_mark, welch_t_test)
from outlier_lab.report.table import Cell, Column, Group, Table, build_table, choose_tokens_target, group_runs

__all__ = [
    "FIGURES", "Cell", "Column", "Comparison", "Group", "Run", "Table", "aggregate", "bootstrap_mean_difference",
    "build_table", "choose_tokens_target", "clopper_pearson", "column_metrics", "compare", "declared_key",
    "find_runs", "fisher_test", "format_cell", "format_number", "group_runs", "holm", "load_runs", "logrank_test",
    "main", "make_figures", "mann_whitney", "markdown_report", "markdown_table", "panel_metrics", "ratio_columns",
    "read_run", "rich_tables", "significance_mark", "welch_t_test", "write_report",
]
