"""How fast an outlier grows over training: a power law fitted to the late part of its curve,
and the declarations of the values the OutlierMonitor writes from it at the end of a run.

Guo et al. 2024 find the first token's residual-state peak growing about linearly in steps
under Adam, so log(peak) against log(step) is close to a line, and its slope is one number
per run that compares arms whose budgets cannot reach the peak itself: slope 1 is linear
growth, 0 a flat curve. Only the last part of training is fitted (``FIT_FROM``: its second
half), where the early transient (the peak first falls as training starts) has passed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from outlier_lab.metrics.registry import Metric, declare

FIT_FROM = 0.5  # fit the steps from this fraction of the last step on

PEAK_CURVE = "outliers/act/residual_peak/max"  # declared in measures, kept at every probe
PEAK_GROWTH = "outliers/act/residual_peak/growth_rate"
# growth value -> the curve it is fitted to (a declared curve metric)
GROWTH = {PEAK_GROWTH: PEAK_CURVE}

declare(Metric(PEAK_GROWTH,
               "growth rate of the residual peak: slope of log peak against log step, last half of training",
               column="peak growth (log-log slope)"))


def power_law_fit(steps: Sequence[float], values: Sequence[float], fit_from: float = FIT_FROM) -> tuple[float, float]:
    """(slope, intercept) of the least-squares line log(value) = intercept + slope log(step)
    over the points with step >= fit_from x the last step (step 0 and values <= 0 have no log
    and are left out); (nan, nan) with fewer than 3 such points."""
    steps, values = np.asarray(steps, dtype=float), np.asarray(values, dtype=float)
    if steps.size == 0:
        return math.nan, math.nan
    keep = (steps >= fit_from * steps.max()) & (steps > 0) & (values > 0) & np.isfinite(values)
    if keep.sum() < 3:
        return math.nan, math.nan
    slope, intercept = np.polyfit(np.log(steps[keep]), np.log(values[keep]), 1)
    return float(slope), float(intercept)


def step_to_reach(target: float, slope: float, intercept: float) -> float:
    """The step at which the fitted power law, rising, reaches ``target``: exp((log target -
    intercept) / slope); inf when the fit does not rise (slope <= 0), so never gets higher."""
    if math.isnan(slope) or math.isnan(intercept):
        return math.nan
    if slope <= 0:
        return math.inf
    return math.exp((math.log(target) - intercept) / slope)


def growth_values(history: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Each declared growth value from a run's probe history (``{"step": s, key: value}`` rows);
    a curve the history lacks gives nan."""
    out = {}
    for key, curve in GROWTH.items():
        points = [(row["step"], row[curve]) for row in history if row.get(curve) is not None]
        out[key] = power_law_fit(*zip(*points))[0] if points else math.nan
    return out
