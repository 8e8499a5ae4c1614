"""The tests of a variant against the baseline, each one scipy's: Welch's t-test and
Mann-Whitney U with a bootstrap interval of the difference of means (continuous values),
Fisher's exact test with Clopper-Pearson intervals (a yes/no outcome per run), the log-rank
test (tokens to a target, runs that never reached it censored); Holm's step-down correction
over a family of p-values, and the marks the corrected p-values earn.

No p-value comes from zero spread: when neither group varies, a t-test or a rank test has
nothing to measure, and the functions here say so (NaN) rather than return 0 or 1.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy import stats

ALPHA = 0.05
SIGNIFICANCE = ((0.01, "**"), (ALPHA, "*"))  # (threshold on the Holm-corrected p, mark), strictest first
CONFIDENCE = 0.95      # of the Clopper-Pearson and bootstrap intervals
BOOTSTRAP_SEED = 0     # the bootstrap's resamples are drawn from this seed: the same report every time
BOOTSTRAP_RESAMPLES = 9999
RELATIVE_SPREAD = 1e-9  # a spread below this fraction of the mean is rounding noise of equal values


def zero_spread(values) -> bool:
    """Whether values are all equal (up to rounding noise of equal values, as the table shows "± 0")."""
    values = np.asarray(values, dtype=float)
    if values.size < 2:
        return True
    return bool(np.std(values, ddof=1) <= RELATIVE_SPREAD * abs(np.mean(values)))


def no_variance(a, b) -> bool:
    """Neither group varies: no t-test, rank test or bootstrap has anything to measure."""
    return zero_spread(a) and zero_spread(b)


def _pair(a, b, test: str) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.size < 2 or b.size < 2:
        raise ValueError(f"{test} needs at least two values on each side")
    return a, b


def welch_t_test(a, b) -> tuple[float, float, float]:
    """Welch's unequal-variance t-test of mean(a) vs mean(b): (t, df, two-sided p), scipy's
    ``ttest_ind(equal_var=False)``. Needs two values on each side. Without spread in either
    group (seeds of a deterministic run can agree exactly) there is no test: NaN, as for
    non-finite values. One group without spread is fine (df from the other)."""
    a, b = _pair(a, b, "Welch's t-test")
    if not (np.isfinite(a).all() and np.isfinite(b).all()) or no_variance(a, b):
        return math.nan, math.nan, math.nan
    with warnings.catch_warnings():  # nearly equal values: scipy warns of precision loss
        warnings.simplefilter("ignore", RuntimeWarning)
        result = stats.ttest_ind(a, b, equal_var=False)
    return float(result.statistic), float(result.df), float(result.pvalue)


def mann_whitney(a, b) -> tuple[float, float]:
    """Mann-Whitney U of a against b: (U of a, two-sided p), scipy's ``mannwhitneyu`` (exact
    distribution for small samples without ties). NaN without spread in either group."""
    a, b = _pair(a, b, "Mann-Whitney U")
    if not (np.isfinite(a).all() and np.isfinite(b).all()) or no_variance(a, b):
        return math.nan, math.nan
    result = stats.mannwhitneyu(a, b, alternative="two-sided")
    return float(result.statistic), float(result.pvalue)


def _mean_difference(a, b, axis=-1):
    return np.mean(a, axis=axis) - np.mean(b, axis=axis)


def bootstrap_mean_difference(a, b, seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """The 95% bootstrap interval (scipy's ``bootstrap``, BCa, groups resampled separately,
    resamples drawn from ``seed``) of mean(a) - mean(b). NaN without spread in either group,
    or where BCa has no answer (too few distinct resamples)."""
    a, b = _pair(a, b, "the bootstrap")
    if not (np.isfinite(a).all() and np.isfinite(b).all()) or no_variance(a, b):
        return math.nan, math.nan
    options = dict(vectorized=True, paired=False, confidence_level=CONFIDENCE, n_resamples=BOOTSTRAP_RESAMPLES)
    with warnings.catch_warnings():  # degenerate resamples of 2-3 seeds: scipy warns and answers NaN
        warnings.simplefilter("ignore")
        result = stats.bootstrap((a, b), _mean_difference, rng=np.random.default_rng(seed), **options)
    interval = result.confidence_interval
    return float(interval.low), float(interval.high)


def clopper_pearson(k: int, n: int) -> tuple[float, float]:
    """The exact binomial (Clopper-Pearson) 95% interval of the fraction k / n, scipy's
    ``binomtest(k, n).proportion_ci(method="exact")``."""
    interval = stats.binomtest(k, n).proportion_ci(confidence_level=CONFIDENCE, method="exact")
    return float(interval.low), float(interval.high)


def fisher_test(k_a: int, n_a: int, k_b: int, n_b: int) -> float:
    """Fisher's exact test of k_a yes out of n_a against k_b out of n_b: two-sided p, scipy's
    ``fisher_exact``. Counts decide it, so groups that are all yes or all no are fine
    (5/5 against 0/5: p = 0.0079; 5/5 against 5/5: p = 1)."""
    return float(stats.fisher_exact([[k_a, n_a - k_a], [k_b, n_b - k_b]]).pvalue)


def logrank_test(events_a, censored_a, events_b, censored_b) -> float:
    """The log-rank test (scipy's ``logrank``) of two groups of times to an event: events_*
    the times of the runs that reached it, censored_* the times at which the others stopped
    (right-censored: at risk up to then). Two-sided p; NaN when there is no event, or no
    variance (every run reached it at one and the same time)."""
    if not len(events_a) and not len(events_b):
        return math.nan
    x = stats.CensoredData(uncensored=np.asarray(events_a, float), right=np.asarray(censored_a, float))
    y = stats.CensoredData(uncensored=np.asarray(events_b, float), right=np.asarray(censored_b, float))
    with warnings.catch_warnings():  # zero variance: scipy divides by zero and answers NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(stats.logrank(x, y).pvalue)


def holm(pvalues) -> list[float]:
    """Holm's step-down adjusted p-values (Holm 1979): the i-th smallest of m is multiplied by
    m - i + 1 (i from 1), made non-decreasing in that order, capped at 1. Rejecting where the
    adjusted p < alpha is Holm's test at alpha, which holds the family-wise error at alpha."""
    p = np.asarray(pvalues, dtype=float)
    if p.size == 0:
        return []
    if not np.isfinite(p).all():
        raise ValueError("Holm's correction needs finite p-values (leave untested comparisons out of the family)")
    order = np.argsort(p, kind="stable")
    stepped = np.maximum.accumulate((p.size - np.arange(p.size)) * p[order])
    adjusted = np.empty(p.size)
    adjusted[order] = np.minimum(stepped, 1.0)
    return adjusted.tolist()


def significance_mark(p: float | None) -> str:
    """"**" for p < 0.01, "*" for p < 0.05, "" otherwise or without a test."""
    if p is None or math.isnan(p):
        return ""
    return next((mark for threshold, mark in SIGNIFICANCE if p < threshold), "")
