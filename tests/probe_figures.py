"""The probe figures (outlier_lab/monitor/plots.py) checked by the data they plot: the figures a
run or analyze.py saves are captured as they are saved, and their lines and images compared
with values computed from the run (its metrics.csv, its weights). Used by test_callbacks,
test_analyze and test_pretrained, in place of a PNG's file size."""

from __future__ import annotations

import re

import numpy as np
import pytest

from outlier_lab.monitor import plots

PROFILE = {"top1": "top-1 |h|", "top2": "top-2 |h|", "top3": "top-3 |h|", "median": "median |h|"}


def capture_saved_figures(monkeypatch) -> list[dict]:
    """Every ``plots.save_figures`` call's figures by name, in call order (the PNGs are still written)."""
    saved, real = [], plots.save_figures

    def keep(figures, *args, **kwargs):
        saved.append(dict(figures))
        return real(figures, *args, **kwargs)

    monkeypatch.setattr(plots, "save_figures", keep)
    return saved


def line_data(ax) -> dict[str, np.ndarray]:
    """{legend label: y values} of an axes' lines."""
    return {line.get_label(): np.asarray(line.get_ydata(), dtype=float) for line in ax.get_lines()}


def check_probe_figures(figures: dict, values: dict[str, float], n_layer: int, rows_sum_to_one: bool = True) -> None:
    """``values``: the probe's metrics as the run logged them. Catches a profile that plots
    another statistic or layer order, attention maps that are not the probabilities (not
    causal, rows not distributions) or not the heads with the highest first-token share, and a
    heatmap of another layer than the one with the largest top1/median."""
    lines = line_data(figures["layer_profile"].axes[0])
    for stat, label in PROFILE.items():
        want = [values[f"outliers/act/{stat}/layer_{l}"] for l in range(n_layer)]
        np.testing.assert_allclose(lines[label], want, rtol=1e-5, err_msg=stat)

    maps = [ax for ax in figures["attention_maps"].axes if ax.get_images()]
    assert 1 <= len(maps) <= 4
    shares = [float(re.search(r"first-token share ([\d.]+)", ax.get_title().replace("\n", " ")).group(1))
              for ax in maps]
    assert shares == sorted(shares, reverse=True)
    assert shares[0] == pytest.approx(values["outliers/attn/first_token_share/max"], abs=0.005 + 1e-9)
    for ax in maps:
        p = np.asarray(ax.get_images()[0].get_array(), dtype=float)
        assert p.shape[0] == p.shape[1] and np.all(np.triu(p, 1) == 0)  # no weight on a later key
        sums = p.sum(-1)
        assert np.all(sums <= 1 + 1e-5) and (not rows_sum_to_one or np.allclose(sums, 1, atol=1e-5))

    layer = int(values["outliers/act/top_channel_layer"])
    heat = figures["channel_heatmap"].axes[0]
    assert f"layer {layer} " in heat.get_title()
    image = np.asarray(heat.get_images()[0].get_array(), dtype=float)
    assert 0 < image.max() <= values[f"outliers/act/max_abs/layer_{layer}"] * (1 + 1e-5)
