"""Which test compares a cell with its baseline, and Holm's correction over a table.

Each column has one test, chosen by what its values are (``Column.test``):

- ``fisher``: a yes/no outcome per run, declared with the metric (``Metric.binary_above``:
  a run counts as yes when its value is above it, e.g. a sink formed). Fisher's exact test on
  the yes counts; the cell shows the fraction with its Clopper-Pearson interval.
- ``logrank``: tokens to a loss target. A run that did not reach it is censored at its last
  step, not dropped: the log-rank test. When every run got there and neither group varies,
  there is no test (as for any value); with runs censored, the counts at risk decide.
- ``welch``: any other value. Welch's t-test decides the mark; Mann-Whitney U and a bootstrap
  interval of the difference of means are listed beside it as checks (with 2-3 seeds
  Mann-Whitney cannot reach p < 0.05 at all: 1/3 for 2 against 2, 0.1 for 3 against 3).

Every p-value that can give a mark in a table belongs to one family, corrected by Holm's
step-down procedure; the marks are the corrected ones. A comparison without a p-value (no
variance, no run reached the target) is no test and not in the family; with fewer than
MIN_RUNS runs on a side there is no comparison at all.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from outlier_lab.report.stats import (bootstrap_mean_difference, fisher_test, holm, logrank_test,
                                      mann_whitney, no_variance, significance_mark, welch_t_test)

if TYPE_CHECKING:
    from outlier_lab.report.table import Cell, Column

# test -> (footnote letter after a mark, name)
TESTS = {"welch": ("ᵗ", "Welch's t-test"), "fisher": ("ᶠ", "Fisher's exact test"),
         "logrank": ("ˡ", "log-rank test")}
MIN_RUNS = 2  # runs on each side for any test


@dataclass
class Comparison:
    """A cell against its baseline: the test, its two-sided p (NaN: no test, ``note`` says
    why) and the Holm-corrected p that gives the mark; for Welch's test the checks beside it."""
    test: str
    p: float = math.nan
    note: str = ""
    p_holm: float = math.nan
    mann_whitney: float = math.nan                    # Mann-Whitney U's p (uncorrected)
    difference: float = math.nan                      # mean(variant) - mean(baseline); Fisher: of the fractions
    interval: tuple[float, float] = (math.nan, math.nan)  # its 95% bootstrap interval (Welch)
    counts: str = ""                                  # Fisher, log-rank: "yes/runs against yes/runs"

    @property
    def tested(self) -> bool:
        return math.isfinite(self.p)

    @property
    def mark(self) -> str:
        """"**" / "*" of the Holm-corrected p, "" without a test or a significant difference."""
        return significance_mark(self.p_holm) if self.tested else ""

    @property
    def letter(self) -> str:
        return TESTS[self.test][0]


def censoring_times(cell: Cell, other: Cell) -> tuple[list[float], list[float]]:
    """The censoring times of both cells' runs that did not reach the target; a run whose end
    is unknown (no train/tokens in its metrics.csv) is censored after every time in the
    comparison, i.e. at risk at each event, which is what a common step budget means."""
    known = [t for t in list(cell.values) + list(other.values) + cell.censored + other.censored if t is not None]
    latest = max(known, default=0.0)
    return ([latest if t is None else t for t in cell.censored],
            [latest if t is None else t for t in other.censored])


def compare(column: Column, cell: Cell, base: Cell) -> Comparison | None:
    """The column's test of cell against base; None when either has fewer than MIN_RUNS runs
    (for tokens to a target: runs, reached or censored; otherwise: values)."""
    result = Comparison(column.test)
    if column.test == "logrank":
        runs, base_runs = cell.n + len(cell.censored), base.n + len(base.censored)
        if runs < MIN_RUNS or base_runs < MIN_RUNS:
            return None
        result.counts = f"reached {cell.n}/{runs} against {base.n}/{base_runs}"
        if not cell.censored and not base.censored and no_variance(cell.values, base.values):
            result.note = "no variance"  # every run got there, each group at one time: as for any value
            return result
        censored, base_censored = censoring_times(cell, base)
        result.p = logrank_test(cell.values, censored, base.values, base_censored)
        if not result.tested:
            result.note = "no variance" if cell.values or base.values else "no run reached it"
        return result
    if cell.n < MIN_RUNS or base.n < MIN_RUNS:
        return None
    if column.test == "fisher":
        result.p = fisher_test(cell.yes, cell.n, base.yes, base.n)
        result.difference = cell.fraction - base.fraction
        result.counts = f"{cell.yes}/{cell.n} against {base.yes}/{base.n}"
        return result
    result.difference = float(np.mean(cell.values) - np.mean(base.values))
    if no_variance(cell.values, base.values):
        result.note = "no variance"
        return result
    result.p = welch_t_test(cell.values, base.values)[2]
    if not result.tested:
        result.note = "non-finite values"
        return result
    result.mann_whitney = mann_whitney(cell.values, base.values)[1]
    result.interval = bootstrap_mean_difference(cell.values, base.values)
    return result


def correct(comparisons: list[Comparison]) -> None:
    """Holm's correction over the tested comparisons (the family), in place."""
    family = [c for c in comparisons if c.tested]
    for comparison, adjusted in zip(family, holm([c.p for c in family])):
        comparison.p_holm = adjusted
