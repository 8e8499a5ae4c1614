"""outlier_lab/monitor/plots.py on small synthetic inputs: each figure's structure, PNG output, logger hand-off."""

from __future__ import annotations

import warnings

import matplotlib.image
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from matplotlib.figure import Figure

from outlier_lab.monitor import plots


def _layer_stats(n_layers: int = 4) -> list[dict[str, float]]:
    return [{"top1": 10.0 ** (l + 1), "top2": 5.0 * (l + 1), "top3": 3.0 * (l + 1), "median": 0.5}
            for l in range(n_layers)]


def _hidden(t: int = 32, c: int = 64) -> torch.Tensor:
    h = torch.randn(t, c, generator=torch.Generator().manual_seed(0))
    h[:, 7] = 500.0  # one massive channel
    return h


def _attention(n: int = 3, t: int = 16) -> list[tuple[str, torch.Tensor]]:
    logits = torch.zeros(t, t)
    logits[:, 0] = 4.0  # first-token sink
    causal = torch.ones(t, t).tril().bool()
    probs = logits.masked_fill(~causal, float("-inf")).softmax(-1)
    return [(f"layer {i} head 0 (first-token share {probs[1:, 0].mean():.2f})", probs) for i in range(n)]


def _history() -> list[dict[str, float]]:
    records = [{"step": s, "val_loss": 5.0 / (1 + s / 100), "top1_over_median": 2.0 * 1.05 ** s}
               for s in range(0, 200, 20)]
    records[3].pop("top1_over_median")  # some keys missing in some records
    return records


def _panels(fig: Figure) -> list:
    """Axes that are not colorbars."""
    return [ax for ax in fig.axes if not hasattr(ax, "_colorbar")]


def test_layer_profile_lines_and_log_scale():
    fig = plots.layer_profile(_layer_stats(4), "residual stream")
    assert isinstance(fig, Figure)
    (ax,) = fig.axes
    lines = ax.get_lines()
    assert len(lines) == 4
    assert all(len(line.get_xdata()) == 4 for line in lines)
    assert ax.get_yscale() == "log"
    assert [t.get_text() for t in ax.get_legend().get_texts()][0].startswith("top-1")
    assert np.allclose(lines[0].get_ydata(), [10, 100, 1000, 10000])


@pytest.mark.parametrize("t, labels", [(32, True), (100, False)])
def test_channel_token_heatmap_shape_and_norm(t, labels):
    h = _hidden(t, 64)
    token_labels = ["<s>", "\n", " ", "."] + [f"tok{i}" for i in range(t - 4)] if labels else None
    fig = plots.channel_token_heatmap(h, "block 2 output", token_labels=token_labels, max_tokens=64)
    (ax,) = _panels(fig)
    assert len(fig.axes) == 2  # heatmap + colorbar
    (image,) = ax.get_images()
    plotted = np.asarray(image.get_array())
    assert plotted.shape == (min(t, 64), 64)
    assert np.allclose(plotted, h[:64].abs().numpy()) and plotted.max() == pytest.approx(500.0)  # |h| itself
    # a linear colour scale from 0 to max |h|: half of the largest entry is half-way up the colours
    assert (image.norm.vmin, image.norm.vmax) == (0.0, pytest.approx(500.0))
    assert image.norm(250.0) == pytest.approx(0.5) and image.norm(5.0) == pytest.approx(0.01)
    (ring,) = ax.get_lines()  # around the largest entry: channel 7, its first position
    assert ring.get_xydata().tolist() == [[7.0, 0.0]]
    assert ax.get_xlim() == (-0.5, 63.5)  # the ring does not widen the axes
    if labels:
        ticks = [tick.get_text() for tick in ax.get_yticklabels()]
        assert ticks[:4] == ["<s>", "\\n", "\u2423", "."]


def test_attention_maps_grid_and_crop():
    fig = plots.attention_maps(_attention(3, 16), "attention", max_tokens=8)
    panels = _panels(fig)
    assert len(panels) == 3 and len(fig.axes) == 4  # three maps + one shared colorbar
    for ax in panels:
        (image,) = ax.get_images()
        assert image.get_array().shape == (8, 8)
        assert image.get_clim() == (0.0, 1.0)
    many = plots.attention_maps(_attention(12, 4), "many")
    assert len(_panels(many)) == 8


def test_history_panels_missing_key_and_log_scale():
    fig = plots.history(_history(), ["val_loss", "top1_over_median", "absent"], "metrics")
    loss_ax, ratio_ax, absent_ax = fig.axes
    assert len(loss_ax.get_lines()[0].get_xdata()) == 10
    assert len(ratio_ax.get_lines()[0].get_xdata()) == 9  # one record lacks the key
    assert loss_ax.get_yscale() == "linear"  # 5 .. 1.7: spans less than 20x
    assert ratio_ax.get_yscale() == "log"  # 2 .. 2*1.05**180: spans decades
    assert not absent_ax.get_lines() and absent_ax.texts


def test_save_figures_png_and_tensorboard(tmp_path):
    figures = {"layer_profile": plots.layer_profile(_layer_stats(), "p"),
               "heatmap": plots.channel_token_heatmap(_hidden(), "h")}
    tb = TensorBoardLogger(tmp_path / "tb", name="", version=0)
    csv = CSVLogger(tmp_path / "csv")  # not image-capable: skipped
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        paths = plots.save_figures(figures, tmp_path / "plots", loggers=[tb, csv], step=5)
    assert [p.name for p in paths] == ["layer_profile.png", "heatmap.png"]
    for path, fig in zip(paths, figures.values()):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = fig.get_size_inches() * 110
        assert matplotlib.image.imread(path).shape[:2] == (round(height), round(width))
    tb.experiment.flush()
    assert list((tmp_path / "tb").rglob("events.out.tfevents.*"))


class _BrokenTensorBoard(TensorBoardLogger):
    @property
    def experiment(self):
        raise RuntimeError("upload failed")


def test_save_figures_logger_failure_only_warns(tmp_path):
    figures = {"a": plots.layer_profile(_layer_stats(), "a"), "b": plots.layer_profile(_layer_stats(), "b")}
    with pytest.warns(RuntimeWarning, match="upload failed") as record:
        paths = plots.save_figures(figures, tmp_path, loggers=[_BrokenTensorBoard(tmp_path / "tb")])
    assert len(record) == 1  # warned once, not per figure
    assert all(p.is_file() for p in paths)


def test_save_figures_wandb_log_image(tmp_path):
    from unittest.mock import Mock

    from lightning.pytorch.loggers import WandbLogger

    wandb_logger = Mock(spec=WandbLogger)
    (path,) = plots.save_figures({"profile": plots.layer_profile(_layer_stats(), "p")}, tmp_path,
                                 loggers=[wandb_logger], step=7)
    wandb_logger.log_image.assert_called_once_with(key="plots/profile", images=[str(path)], step=7)


def test_edge_cases_do_not_raise():
    assert isinstance(plots.attention_maps([], "none"), Figure)
    assert isinstance(plots.history([], [], "none"), Figure)
    assert isinstance(plots.layer_profile([], "none"), Figure)
    fig = plots.channel_token_heatmap(torch.zeros(4, 8, dtype=torch.bfloat16), "zeros")
    assert _panels(fig)[0].get_images()[0].get_array().shape == (4, 8)
