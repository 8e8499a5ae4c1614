"""The OutlierMonitor's figures: per-layer magnitude profiles, channel x token heatmaps,
attention maps and metric histories, plus ``save_figures`` to write them as PNGs and log
them to wandb / TensorBoard. They share ``outlier_lab.figure_style`` with the offline report's
figures, so the two sets look alike.
"""

from __future__ import annotations

import math
import textwrap
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from outlier_lab.metrics.measures_attention import first_maps, head_shares
from outlier_lab.figure_style import layer_axes, log_scale_if_wide, marker_style, new_figure, no_data, save, step_panel

MAX_PANELS = 8
_PROFILE_STYLES = {  # key -> (legend label, line style)
    "top1": ("top-1 |h|", dict(color="tab:red", marker="o")),
    "top2": ("top-2 |h|", dict(color="tab:orange", marker="s")),
    "top3": ("top-3 |h|", dict(color="tab:olive", marker="^")),
    "median": ("median |h|", dict(color="tab:gray", marker="D", linestyle="--")),
}


def _grid(n: int, max_cols: int = 4) -> tuple[int, int]:
    """(rows, cols) for n panels, balanced: 5-6 panels are 2x3, 7-8 are 2x4."""
    rows = math.ceil(max(n, 1) / max_cols)
    return rows, math.ceil(max(n, 1) / rows)


def _token_text(label: str) -> str:
    """repr-escape a token for display ("\\n" instead of a line break), without the quotes."""
    text = repr(str(label))[1:-1]
    return text.replace(" ", "\u2423") if text.strip() == "" else text  # make spaces visible


def layer_profile(per_layer: list[dict[str, float]], title: str) -> Figure:
    """Top-1/2/3 and median |h| of the residual stream per layer, log y (the seed paper's plot)."""
    fig = new_figure(6.4, 4.0)
    ax = fig.add_subplot()
    layers = np.arange(len(per_layer))
    for key, (label, style) in _PROFILE_STYLES.items():
        values = [float(stats.get(key, math.nan)) for stats in per_layer]
        ax.plot(layers, values, label=label, markersize=5, linewidth=1.5, **style)
    layer_axes(ax, "magnitude |h| (log)")
    ax.set_title(title)
    ax.legend(loc="best", fontsize="small")
    return fig


def channel_token_heatmap(h: torch.Tensor, title: str, token_labels: list[str] | None = None,
                          max_tokens: int = 64) -> Figure:
    """|h| of one sequence, (T, C), as a heatmap on a linear colour scale from 0 to the largest
    |h| (x = channel, y = token position): the largest entries, the outliers, are the darkest
    cells, everything near zero fades to white, and the largest one is ringed."""
    if h.dim() != 2:
        raise ValueError(f"channel_token_heatmap expects a (T, C) tensor, got shape {tuple(h.shape)}")
    values = h[:max_tokens].detach().float().abs().cpu().numpy()
    n_tokens, n_channels = values.shape
    peak = float(np.nanmax(values)) if values.size else 0.0

    labelled = token_labels is not None and len(token_labels) >= n_tokens and n_tokens <= 64
    fig = new_figure(8.0, min(9.0, max(3.5, 1.6 + 0.13 * n_tokens)) if labelled else 4.5)
    ax = fig.add_subplot()
    image = ax.imshow(values, norm=Normalize(vmin=0.0, vmax=peak if peak > 0 else 1.0), cmap="magma_r",
                      aspect="auto", interpolation="nearest")
    fig.colorbar(image, ax=ax, label="|h|")
    ax.set_xlabel("channel")
    ax.set_ylabel("token" if labelled else "token position")
    ax.set_title(title)
    if labelled:
        ax.set_yticks(range(n_tokens), [_token_text(t) for t in token_labels[:n_tokens]],
                      fontsize=6, fontfamily="monospace")
    else:
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    if values.size:  # name the hottest channel, the one the outlier analysis is about
        t, c = np.unravel_index(np.nanargmax(values), values.shape)
        ax.set_xlabel(f"channel (max |h| = {peak:.3g} at channel {c}, position {t}, ringed)")
        ax.plot(c, t, marker="o", markersize=14, markerfacecolor="none", markeredgecolor="tab:cyan",
                markeredgewidth=2, linestyle="none", clip_on=False)
    return fig


def attention_maps(maps: list[tuple[str, torch.Tensor]], title: str, max_tokens: int = 64) -> Figure:
    """Up to 8 attention probability maps (T, T) in a grid, shared 0..1 colour scale."""
    maps = list(maps)[:MAX_PANELS]
    rows, cols = _grid(len(maps))
    fig = new_figure(3.0 * cols + 0.8, 3.0 * rows + 0.6)
    fig.suptitle(textwrap.fill(title, 12 * cols + 14), fontsize=10)  # one narrow panel: wrap the title
    axes, image = [], None
    for i, (label, probs) in enumerate(maps):
        ax = fig.add_subplot(rows, cols, i + 1)
        values = probs[:max_tokens, :max_tokens].detach().float().cpu().numpy()
        image = ax.imshow(values, vmin=0.0, vmax=1.0, cmap="viridis", interpolation="nearest")
        ax.set_title(textwrap.fill(label, 32), fontsize=8)
        ax.set_xlabel("key position", fontsize=8)
        ax.set_ylabel("query position", fontsize=8)
        ax.tick_params(labelsize=7)
        axes.append(ax)
    if image is None:
        fig.text(0.5, 0.5, "no attention maps", ha="center", va="center")
    else:
        fig.colorbar(image, ax=axes, label="attention probability", shrink=0.9)
    return fig


def weight_columns(metrics: dict[str, float], title: str) -> Figure:
    """The seed paper's weight-outlier picture per layer: the largest and the median column
    ratio max|W|/mean|W| of each FFN down projection (log y), layers whose top weight column
    is the top input-activation channel marked."""
    layers = sorted(int(k.rsplit("_", 1)[1]) for k in metrics if k.startswith("outliers/weight/down_proj_col_ratio/layer_"))
    fig = new_figure(6.4, 4.0)
    ax = fig.add_subplot()
    top = [metrics[f"outliers/weight/down_proj_col_ratio/layer_{l}"] for l in layers]
    ax.plot(layers, top, color="tab:red", marker="o", label="largest column ratio")
    ax.plot(layers, [metrics[f"outliers/weight/down_proj_col_ratio_median/layer_{l}"] for l in layers],
            color="tab:gray", marker="D", linestyle="--", label="median column ratio")
    aligned = [l for l in layers if metrics.get(f"outliers/weight/down_proj_aligned/layer_{l}")]
    if aligned:
        ax.scatter(aligned, [top[layers.index(l)] for l in aligned], s=160, facecolors="none", edgecolors="black",
                   label="top column = top activation channel")
    layer_axes(ax, "max|W| / mean|W| per column (log)")
    ax.set_title(title)
    ax.legend(loc="best", fontsize="small")
    return fig


def history(history: list[dict[str, float]], keys: list[str], title: str) -> Figure:
    """One panel per metric (up to 8): value vs step; log y when positive and spanning > 20x."""
    keys = list(keys)[:MAX_PANELS]
    rows, cols = _grid(len(keys))
    fig = new_figure(3.4 * cols + 0.4, 2.8 * rows + 0.6)
    fig.suptitle(title)
    for i, key in enumerate(keys):
        ax = fig.add_subplot(rows, cols, i + 1)
        points = [(float(r["step"]), float(r[key])) for r in history
                  if r.get("step") is not None and r.get(key) is not None]
        step_panel(ax, key, title_size=9)  # raw keys: longer than the report's titles
        if not points:
            no_data(ax)
            continue
        steps, values = np.array(points).T
        ax.plot(steps, values, linewidth=1.3, **marker_style("o", len(steps), size=3))
        ax.set_ylabel(f"{key} (log)" if log_scale_if_wide(ax, values) else key, fontsize=8)
    if not keys:
        fig.text(0.5, 0.5, "no metrics", ha="center", va="center")
    return fig


def save_figures(figures: dict[str, Figure], out_dir, loggers=(), step: int | None = None) -> list[Path]:
    """Write each figure to ``out_dir/{name}.png`` and log it to the image-capable loggers
    (WandbLogger, TensorBoardLogger; others are skipped). Figures are not closed. A logger that
    fails only produces one warning per call: plotting must never break training."""
    from lightning.pytorch.loggers import Logger, TensorBoardLogger, WandbLogger

    if isinstance(loggers, Logger):
        loggers = [loggers]
    loggers = list(loggers) if isinstance(loggers, Iterable) else []
    out_dir = Path(out_dir)
    paths, warned = [], False
    for name, fig in figures.items():
        path = save(fig, out_dir / f"{name}.png")
        paths.append(path)
        for logger in loggers:
            try:
                if isinstance(logger, WandbLogger):
                    logger.log_image(key=f"plots/{name}", images=[str(path)], step=step)
                elif isinstance(logger, TensorBoardLogger):
                    logger.experiment.add_figure(f"plots/{name}", fig, global_step=step or 0, close=False)
            except Exception as exc:  # noqa: BLE001 - an upload problem must not stop training
                if not warned:
                    warnings.warn(f"could not log plot {name!r} to {type(logger).__name__}: "
                                  f"{type(exc).__name__}: {exc}", RuntimeWarning, stacklevel=2)
                    warned = True
    return paths


def probe_figures(parts: dict, metrics: dict[str, float], labels: list[str],
                  step: int | None = None) -> dict[str, Figure]:
    """The figures of one probe: the per-layer |h| profile, |h| by channel and token of the layer
    with the largest top1/median, and the four heads with the highest first-token share.
    ``parts`` are the partial results its measures were finished from (``probe.stream``),
    ``metrics`` its measures, ``labels`` the decoded tokens of its first sequence."""
    where = "" if step is None else f", step {step}"
    layer = int(metrics["outliers/act/top_channel_layer"])
    residual = parts["activation_outliers"]["act"]
    per_layer = [{k: metrics[f"outliers/act/{k}/layer_{l}"] for k in ("top1", "top2", "top3", "median")}
                 for l in range(len(residual))]
    attention = parts["attention_outliers"]
    shares = [(l, h, share) for l, per_head in enumerate(head_shares(attention))
              for h, share in enumerate(per_head.tolist())]
    heads = sorted(shares, key=lambda x: -x[2])[:4]
    maps = first_maps(attention)
    return {
        "layer_profile": layer_profile(per_layer, f"Residual |h| per layer{where}"),
        "channel_heatmap": channel_token_heatmap(
            residual[layer]["first"], f"|h| of layer {layer} (largest top1/median){where}", labels),
        "attention_maps": attention_maps([(f"layer {l} head {h} (first-token share {share:.2f})", maps[l][h])
                                          for l, h, share in heads],
                                         f"Heads with the highest first-token share{where}"),
    }
