"""The growth rate of the residual-state peak: a power law fitted to the second half of a curve."""

from __future__ import annotations

import math

import numpy as np
import pytest

from outlier_lab.metrics import growth
from outlier_lab.metrics.registry import get


def test_the_fit_recovers_a_power_law_from_the_second_half_only():
    steps = np.arange(0, 10_001, 250)
    late = 3.0 * steps.astype(float) ** 0.8
    # an early transient (the peak first falls as training starts) that a fit over the whole
    # curve would take into its slope
    values = np.where(steps < 5_000, 50.0, late)
    slope, intercept = growth.power_law_fit(steps, values)
    assert slope == pytest.approx(0.8, abs=1e-9) and math.exp(intercept) == pytest.approx(3.0, rel=1e-9)
    whole = np.polyfit(np.log(steps[1:]), np.log(values[1:]), 1)[0]
    assert abs(whole - 0.8) > 0.1  # so the half matters on this curve


def test_points_without_a_log_are_left_out_and_too_few_give_nan():
    # step 0 and the zero value have no log; 20, 30, 40 remain, on value = step / 5
    assert growth.power_law_fit([0, 10, 20, 25, 30, 40], [1.0, 2.0, 4.0, 0.0, 6.0, 8.0])[0] == pytest.approx(1.0)
    assert math.isnan(growth.power_law_fit([0, 10, 20], [1.0, 0.0, 4.0])[0])  # one usable point in the half
    assert math.isnan(growth.power_law_fit([], [])[0])


def test_step_to_reach_inverts_the_fit():
    slope, intercept = 0.5, math.log(2.0)  # value = 2 sqrt(step)
    assert growth.step_to_reach(10.0, slope, intercept) == pytest.approx(25.0)
    assert growth.step_to_reach(10.0, -0.1, intercept) == math.inf  # a falling fit never gets there
    assert growth.step_to_reach(10.0, 0.0, intercept) == math.inf
    assert math.isnan(growth.step_to_reach(10.0, math.nan, math.nan))


def test_growth_values_read_the_declared_curve_from_a_probe_history():
    assert get(growth.PEAK_CURVE).curve  # kept at every probe, so the history holds it
    assert get(growth.PEAK_GROWTH).column  # and its rate is a report column
    history = [{"step": s, growth.PEAK_CURVE: 0.5 * s ** 1.0} for s in (0, 100, 200, 300, 400)]
    history.append({"step": 500})  # a probe row without the curve (e.g. a resumed run's first) is skipped
    assert growth.growth_values(history) == {growth.PEAK_GROWTH: pytest.approx(1.0)}
    assert math.isnan(growth.growth_values([{"step": 0}])[growth.PEAK_GROWTH])
