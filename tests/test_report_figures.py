"""The report's figures checked by the data they plot (outlier_lab/report/figures.py): every
line's x and y against the values the synthetic runs of tests/test_report.py were written
with, so a figure that draws the wrong statistic, step, run or variant fails, however good
its PNG looks."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from outlier_lab import figure_style, report
from outlier_lab.report.figures import EXTREME_PANELS
from tests.test_report import N_LAYER, TOP1, VARIANTS, make_sweep, write_config

VAL_STEPS = [0, 24, 49, 74, 99]  # test_report.write_metrics: val every 25 steps, and step 0
PROBE_STEPS = [0, 50, 99]


def val_loss(final: float, seed: int, step: int) -> float:
    return final + (3.0 + 0.4 * seed) * (1 - step / 99) ** 2  # write_metrics with spread = seed


def probe_scale(step: int) -> float:
    return 0.1 + 0.9 * step / 99


@pytest.fixture(scope="module")
def drawn(tmp_path_factory):
    runs = report.load_runs([make_sweep(tmp_path_factory.mktemp("figures"))])
    groups = report.group_runs(runs, "softmax")
    colors = figure_style.colors([g.label for g in groups])
    return report.make_figures(groups), colors


def lines_of(ax, color, **props):
    return [line for line in ax.get_lines() if line.get_color() == color
            and all(getattr(line, f"get_{k}")() == v for k, v in props.items())]


def test_loss_curves_draw_the_mean_val_loss_of_the_complete_runs_and_the_crashed_one_dotted(drawn):
    """Catches a mean that takes in the crashed run (softmax s2, 1.3 at the end) or one seed only,
    the train loss drawn as the val curve, or a crashed run left out."""
    figures, colors = drawn
    ax = figures["loss_curves"].axes[0]
    for variant, spec in VARIANTS.items():
        (line,) = [l for l in ax.get_lines() if l.get_label() == f"{variant} (n=2)"]
        want = [np.mean([val_loss(spec["loss"][seed], seed, step) for seed in (0, 1)]) for step in VAL_STEPS]
        np.testing.assert_allclose(line.get_xdata(), VAL_STEPS)
        np.testing.assert_allclose(line.get_ydata(), want, rtol=1e-9)
        assert line.get_color() == colors[variant]
    (crashed,) = lines_of(ax, colors["softmax"], linestyle=":")
    np.testing.assert_allclose(crashed.get_xdata(), [0, 24, 49])  # it stopped at step 60
    np.testing.assert_allclose(crashed.get_ydata(), [val_loss(1.3, 0, s) for s in (0, 24, 49)], rtol=1e-9)
    assert not lines_of(ax, colors["clipped_softmax"], linestyle=":")  # no crashed run of its own


def test_outliers_over_steps_draw_each_variants_mean_of_the_logged_values(drawn):
    """Catches a panel drawing another metric than its title says, a sum instead of a mean, or
    the crashed run (top1/median 600) averaged in."""
    figures, colors = drawn
    title = next(m.title for m in report.panel_metrics() if m.key == TOP1)
    (ax,) = [a for a in figures["outliers_vs_step"].axes if a.get_title() == title]
    for variant, spec in VARIANTS.items():
        (line,) = lines_of(ax, colors[variant])
        want = [np.mean([5 + t * probe_scale(step) for t in spec["top1_over_median"]]) for step in PROBE_STEPS]
        np.testing.assert_allclose(line.get_xdata(), PROBE_STEPS)
        np.testing.assert_allclose(line.get_ydata(), want, rtol=1e-9)


def test_layer_profile_draws_top1_median_and_their_ratio_at_the_last_step(drawn):
    """Catches the first measurement drawn instead of the last, top-2 for top-1, or the ratio
    of another pair."""
    figures, colors = drawn
    ax_abs, ax_ratio = figures["layer_profile"].axes[:2]
    layers = list(range(N_LAYER))
    median = [0.5 + 0.1 * l for l in layers]
    for variant, spec in VARIANTS.items():
        top1 = [np.mean([m * (5 + t * (l + 1) / N_LAYER) for t in spec["top1_over_median"]])
                for l, m in zip(layers, median)]  # write_metrics at step 99, where the scale is 1
        (solid,) = lines_of(ax_abs, colors[variant], linestyle="-")
        (dashed,) = lines_of(ax_abs, colors[variant], linestyle="--")
        (ratio,) = lines_of(ax_ratio, colors[variant])
        for line in (solid, dashed, ratio):
            np.testing.assert_allclose(line.get_xdata(), layers)
        np.testing.assert_allclose(solid.get_ydata(), top1, rtol=1e-9)
        np.testing.assert_allclose(dashed.get_ydata(), median, rtol=1e-9)
        np.testing.assert_allclose(ratio.get_ydata(), np.array(top1) / median, rtol=1e-9)


def test_extreme_tokens_draw_each_layers_mean_over_seeds_at_the_last_measurement(tmp_path):
    """Residual-state peak and value-state drain per layer: catches the first step drawn
    instead of the last, one panel's statistic in the other, or a seed left out."""
    keys = [f"outliers/{stat}/layer_{l}" for stat, _ in EXTREME_PANELS for l in range(2)]

    def value(seed, step, stat_index, layer):  # peaks grow over steps, drains shrink
        return (10.0 * (layer + 1) * (1 + step) if stat_index == 0 else 1 / (1 + step + layer)) * (1 + seed)

    for seed in (0, 1):
        run = tmp_path / f"{seed}_softmax-nano-s{seed}"
        write_config(run, "softmax", seed)
        with open(run / "metrics.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["step", "val/loss", *keys])
            writer.writeheader()
            for step in (0, 5):
                writer.writerow({"step": step, "val/loss": 2.0, **{
                    f"outliers/{stat}/layer_{l}": value(seed, step, i, l)
                    for i, (stat, _) in enumerate(EXTREME_PANELS) for l in range(2)}})
    figure = report.make_figures(report.group_runs(report.load_runs([tmp_path]), "softmax"))["extreme_tokens"]
    for i, ax in enumerate(figure.axes[:2]):
        assert ax.get_title() == EXTREME_PANELS[i][1]
        (line,) = [l for l in ax.get_lines() if l.get_label() == "softmax"]
        np.testing.assert_allclose(line.get_xdata(), [0, 1])
        np.testing.assert_allclose(line.get_ydata(), [np.mean([value(s, 5, i, l) for s in (0, 1)]) for l in (0, 1)],
                                   rtol=1e-9)


def test_peak_growth_draws_the_mean_peak_with_its_band_on_log_axes_and_the_fitted_slope(tmp_path):
    """The residual peak over steps: catches step 0 drawn on the log axis, the band of the wrong
    seeds, the mean replaced by one seed, or a slope in the legend that is not the runs' mean."""
    import json

    from outlier_lab.metrics.growth import PEAK_CURVE, PEAK_GROWTH

    steps = [0, 10, 20, 40]
    for seed, (scale, slope) in enumerate([(1.0, 0.5), (3.0, 0.7)]):
        run = tmp_path / f"{seed}_softmax-nano-s{seed}"
        write_config(run, "softmax", seed)
        (run / "summary.json").write_text(json.dumps({"convergence/final_val_loss": 2.0, PEAK_GROWTH: slope}))
        with open(run / "metrics.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["step", "val/loss", PEAK_CURVE])
            writer.writeheader()
            for step in steps:
                writer.writerow({"step": step, "val/loss": 2.0, PEAK_CURVE: scale * (1 + step)})
    figure = report.make_figures(report.group_runs(report.load_runs([tmp_path]), "softmax"))["peak_growth"]
    ax = figure.axes[0]
    assert ax.get_xscale() == ax.get_yscale() == "log"
    (line,) = [l for l in ax.get_lines() if l.get_color() != "gray"]
    np.testing.assert_allclose(line.get_xdata(), [10, 20, 40])  # step 0 has no place on a log axis
    np.testing.assert_allclose(line.get_ydata(), [2.0 * (1 + s) for s in (10, 20, 40)])  # mean of 1x and 3x
    (band,) = ax.collections
    low_high = band.get_paths()[0].vertices[:, 1]
    assert low_high.min() == pytest.approx(11.0) and low_high.max() == pytest.approx(123.0)  # seed 0's min, seed 1's max
    assert figure.legends[0].get_texts()[0].get_text() == "softmax (n=2, slope 0.60)"
