"""Welch's t-test of a variant against the baseline, and the marks it earns in the table."""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy import stats

SIGNIFICANCE = ((0.01, "**"), (0.05, "*"))  # (threshold, mark), strictest first


def welch_t_test(a, b) -> tuple[float, float, float]:
    """Welch's unequal-variance t-test of mean(a) vs mean(b): (t, df, two-sided p). Needs two
    values on each side. Seeds of a deterministic run can agree exactly, so the cases without
    any spread, where scipy has no answer (NaN), are decided here: equal means give p = 1,
    different means p = 0. Non-finite values give NaN."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.size < 2 or b.size < 2:
        raise ValueError("Welch's t-test needs at least two values on each side")
    diff = float(a.mean() - b.mean())
    se2 = float(a.var(ddof=1) / a.size + b.var(ddof=1) / b.size)
    if not math.isfinite(diff) or not math.isfinite(se2):
        return math.nan, math.nan, math.nan
    if se2 == 0.0:
        return (0.0, math.inf, 1.0) if diff == 0.0 else (math.copysign(math.inf, diff), math.inf, 0.0)
    with warnings.catch_warnings():  # nearly equal values: scipy warns of precision loss
        warnings.simplefilter("ignore", RuntimeWarning)
        result = stats.ttest_ind(a, b, equal_var=False)
    return float(result.statistic), float(result.df), float(result.pvalue)


def significance_mark(p: float | None) -> str:
    """"**" for p < 0.01, "*" for p < 0.05, "" otherwise or without a test."""
    if p is None or math.isnan(p):
        return ""
    return next((mark for threshold, mark in SIGNIFICANCE if p < threshold), "")
