"""The report's figures: validation loss over steps, the declared outlier panels over
steps, the growth of the first token's residual-state peak (with its spread over seeds), the
per-layer profile and the first token's residual-state peak and value-state drain per layer at
the last measurement; one line per variant (mean over seeds), in the shared figure style of
``outlier_lab.figure_style``.
"""

from __future__ import annotations

from fnmatch import fnmatch

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from outlier_lab import figure_style as style
from outlier_lab.metrics.growth import PEAK_CURVE, PEAK_GROWTH
from outlier_lab.report.declarations import EXTREME_KEY, LAYER_KEY, declared_key, panel_metrics
from outlier_lab.report.load import Run
from outlier_lab.report.table import Group

FIGURES = {  # figure name -> (heading, alt text) in report.md, in the report's order
    "loss_curves": ("Loss curves", "Validation loss vs step"),
    "outliers_vs_step": ("Outlier metrics over training", "Outlier metrics vs step"),
    "peak_growth": ("Growth of the first-token residual peak", "Residual-state peak vs step, log-log, per variant"),
    "layer_profile": ("Per-layer profile", "Per-layer top-1 and median |h|"),
    "extreme_tokens": ("First-token residual peak and value drain per layer",
                       "Residual-state peak and value-state drain of the first token per layer"),
}


def _curve_runs(group: Group) -> list[Run]:
    """The runs averaged in the figures: the complete ones, or all when none completed."""
    return group.complete or group.runs


def aggregate(curves: list[tuple[np.ndarray, np.ndarray]]):
    """(steps, mean, min, max) over runs on the union of their steps; each run is linearly
    interpolated inside its own step range only (a shorter run leaves the mean early)."""
    curves = [(s, v) for s, v in curves if len(s)]
    if not curves:
        return None
    frame = pd.concat([pd.Series(v, index=s) for s, v in curves], axis=1).sort_index()
    frame = frame.interpolate(method="index", limit_area="inside")
    return (frame.index.to_numpy(dtype=float),
            *(stat.to_numpy() for stat in (frame.mean(axis=1), frame.min(axis=1), frame.max(axis=1))))


def _smooth(steps: np.ndarray, values: np.ndarray, points: int = 60):
    """Moving average down to about `points` points (the faint train loss is noisy)."""
    window = len(values) // points
    if window < 2:
        return steps, values
    kernel = np.ones(window) / window
    return np.convolve(steps, kernel, mode="valid"), np.convolve(values, kernel, mode="valid")


def loss_curves_figure(groups: list[Group], colors: dict, markers: dict) -> Figure:
    """Validation loss vs step: mean over seeds with a min–max band; train loss faint (moving
    average); crashed runs of a variant with complete ones as dotted lines."""
    fig = style.new_figure(9.5, 5.0)
    ax = fig.add_subplot()
    val_values, drawn_train, drawn_crashed = [], False, False
    for group in groups:
        color, runs = colors[group.label], _curve_runs(group)
        train = aggregate([r.curves["train/loss"] for r in runs if "train/loss" in r.curves])
        if train is not None:
            ax.plot(*_smooth(train[0], train[1]), color=color, alpha=0.3, linewidth=0.8)
            drawn_train = True
        val = aggregate([r.curves["val/loss"] for r in runs if "val/loss" in r.curves])
        if val is not None:
            steps, mean, lo, hi = val
            ax.fill_between(steps, lo, hi, color=color, alpha=0.18, linewidth=0)
            ax.plot(steps, mean, color=color, linewidth=1.8, label=f"{group.label} (n={len(runs)})",
                    **style.marker_style(markers[group.label], len(steps)))
            val_values += [lo, hi]
        if group.complete:
            for run in group.broken:
                if "val/loss" in run.curves:
                    ax.plot(*run.curves["val/loss"], color=color, linestyle=":", linewidth=1.4)
                    val_values.append(run.curves["val/loss"][1])
                    drawn_crashed = True
    if not val_values:
        style.no_data(ax, "no val/loss logged")
        return fig
    finite = np.concatenate(val_values)
    finite = finite[np.isfinite(finite)]
    if finite.size:  # frame the validation curves; the (higher, noisier) train loss may leave the top
        span = max(finite.max() - finite.min(), 1e-3)
        ax.set_ylim(finite.min() - 0.05 * span, finite.max() + 0.08 * span)
    handles, labels = ax.get_legend_handles_labels()
    if drawn_train:
        handles.append(Line2D([], [], color="gray", alpha=0.4, linewidth=0.8))
        labels.append("train loss (faint)")
    if drawn_crashed:
        handles.append(Line2D([], [], color="gray", linestyle=":"))
        labels.append("crashed run (val)")
    style.outside_legend(fig, handles, labels)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title("Validation loss: mean over seeds, band = min–max")
    ax.grid(True, alpha=0.3)
    return fig


def outliers_figure(groups: list[Group], colors: dict, markers: dict, only: list[str] | None = None) -> Figure:
    """One panel per declared panel metric (titled with its declared title; only: those whose
    key matches one of these glob patterns), a line per variant (mean over seeds); the legend on the right."""
    panels = panel_metrics({key for g in groups for r in _curve_runs(g) for key in r.curves})
    if only is not None:
        panels = [m for m in panels if any(fnmatch(m.key, pattern) for pattern in only)]
    rows = 1 if len(panels) <= 2 else 2
    cols = max(1, -(-len(panels) // rows))
    fig = style.new_figure(4.3 * cols + 3.5, 3.6 * rows)  # + the legend on the right
    fig.suptitle("Outlier metrics over training (mean over seeds)")
    handles = {}
    for i, metric in enumerate(panels):
        ax = fig.add_subplot(rows, cols, i + 1)
        style.step_panel(ax, metric.title)
        drawn = []
        for group in groups:
            agg = aggregate([r.curves[metric.key] for r in _curve_runs(group) if metric.key in r.curves])
            if agg is None:
                continue
            steps, mean = agg[0], agg[1]
            (line,) = ax.plot(steps, mean, color=colors[group.label], linewidth=1.5, alpha=0.85,
                              **style.marker_style(markers[group.label], len(steps)))
            handles.setdefault(group.label, line)
            drawn.append(mean)
        if not drawn:
            style.no_data(ax)
        elif style.log_scale_if_wide(ax, np.concatenate(drawn)):
            ax.set_ylabel("log scale", fontsize=8)
    if handles:
        style.outside_legend(fig, list(handles.values()), list(handles))
    return fig


def peak_growth_figure(groups: list[Group], colors: dict, markers: dict) -> Figure:
    """The first token's residual-state peak (max over layers) over steps on log-log axes, where
    a power law is a line: a line per variant (mean over seeds) with a min-max band, and the
    mean of its runs' fitted slopes (outlier_lab.metrics.growth) in the legend."""
    fig = style.new_figure(9.5, 5.0)
    ax = fig.add_subplot()
    key, growth_key = declared_key(PEAK_CURVE), declared_key(PEAK_GROWTH)
    fig.suptitle("The first token's residual-state peak over training (mean, min-max over seeds)")
    handles, labels = [], []
    for group in groups:
        runs = _curve_runs(group)
        agg = aggregate([r.curves[key] for r in runs if key in r.curves])
        if agg is None:
            continue
        steps, mean, lo, hi = (a[agg[0] > 0] for a in agg)  # log x: step 0 has no place
        color = colors[group.label]
        ax.fill_between(steps, lo, hi, color=color, alpha=0.15, linewidth=0)
        (line,) = ax.plot(steps, mean, color=color, linewidth=1.7, **style.marker_style(markers[group.label], len(steps)))
        slopes = [v for r in runs if (v := r.value(growth_key)) is not None and np.isfinite(v)]
        handles.append(line)
        labels.append(f"{group.label} (n={len(runs)}" + (f", slope {np.mean(slopes):.2f})" if slopes else ")"))
    if not handles:
        style.no_data(ax, f"no {key} logged")
        return fig
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.axhline(1.0, color="gray", linewidth=0.8, linestyle=":")
    ax.set_xlabel("step (log)")
    ax.set_ylabel("||h_0|| / median_j ||h_j||, max over layers (log)")
    style.outside_legend(fig, handles, labels)
    return fig


def _last_layer_values(run: Run, stat: str, pattern=LAYER_KEY) -> dict[int, float]:
    """Per-layer value of `stat` (a pattern's first group, e.g. top1) at the last step it was logged."""
    out = {}
    for key, (steps, values) in run.curves.items():
        match = pattern.match(key)
        if match and match.group(1) == stat and len(values):
            out[int(match.group(2))] = float(values[-1])
    return out


def layer_profile_figure(groups: list[Group], colors: dict, markers: dict) -> Figure:
    """Per layer, at the last measurement: top-1 (solid) and median (dashed) |h| of the residual
    stream, and their ratio; a line per variant (mean over seeds), log y."""
    fig = style.new_figure(13.0, 4.8)
    ax_abs, ax_ratio = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    fig.suptitle("Residual stream per layer at the last measurement (mean over seeds)")
    handles, any_data = [], False
    for group in groups:
        runs = _curve_runs(group)
        profiles = {stat: [_last_layer_values(r, stat) for r in runs] for stat in ("top1", "median")}
        layers = sorted({l for p in profiles["top1"] + profiles["median"] for l in p})
        if not layers:
            continue
        any_data = True
        color = colors[group.label]
        mean = {stat: pd.DataFrame(per_run, columns=layers).mean().to_numpy(dtype=float)
                for stat, per_run in profiles.items()}
        marker = markers[group.label]
        ax_abs.plot(layers, mean["top1"], color=color, marker=marker, markersize=5, linewidth=1.6)
        ax_abs.plot(layers, mean["median"], color=color, marker=marker, markersize=3.5, linewidth=1.1,
                    linestyle="--", alpha=0.8)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = mean["top1"] / mean["median"]
        ax_ratio.plot(layers, ratio, color=color, marker=marker, markersize=5, linewidth=1.6)
        handles.append(Line2D([], [], color=color, marker=marker, linewidth=1.6, label=group.label))
    for ax, ylabel, title in ((ax_abs, "|h| (log)", "top-1 (solid) and median (dashed) |h|"),
                              (ax_ratio, "top-1 / median (log)", "top-1 / median |h|")):
        ax.set_title(title, fontsize=10)
        if any_data:
            style.layer_axes(ax, ylabel)
        else:
            style.no_data(ax, "no per-layer outliers/act/{top1,median} logged")
    if handles:
        handles += [Line2D([], [], color="black", label="top-1 (solid)"),
                    Line2D([], [], color="black", linestyle="--", linewidth=1.1, label="median (dashed)")]
        style.outside_legend(fig, handles, [h.get_label() for h in handles])
    return fig


EXTREME_PANELS = (("act/residual_peak", "residual-state peak ||h_0|| / median_j ||h_j||"),
                  ("attn/value_drain", "value-state drain ||v_0|| / median_j ||v_j||"))


def extreme_tokens_figure(groups: list[Group], colors: dict, markers: dict) -> Figure:
    """Guo et al.'s residual-state peak (block output) and value-state drain (mean over heads)
    of the first token per layer, at the last measurement; a line per variant (mean over
    seeds), log y. A peak is a ratio far above 1, a drain one far below 1."""
    fig = style.new_figure(13.0, 4.8)
    fig.suptitle("First token against the others, per layer, at the last measurement (mean over seeds)")
    axes = [fig.add_subplot(1, 2, i + 1) for i in range(len(EXTREME_PANELS))]
    handles = {}
    for ax, (stat, title) in zip(axes, EXTREME_PANELS):
        ax.set_title(title, fontsize=10)
        drawn = False
        for group in groups:
            per_run = [_last_layer_values(r, stat, EXTREME_KEY) for r in _curve_runs(group)]
            layers = sorted({layer for values in per_run for layer in values})
            if not layers:
                continue
            mean = pd.DataFrame(per_run, columns=layers).mean().to_numpy(dtype=float)
            (line,) = ax.plot(layers, mean, color=colors[group.label], marker=markers[group.label],
                              markersize=5, linewidth=1.6, label=group.label)
            handles.setdefault(group.label, line)
            drawn = True
        if drawn:
            style.layer_axes(ax, "ratio (log)")
            ax.axhline(1.0, color="gray", linewidth=0.8, linestyle=":")
        else:
            style.no_data(ax, f"no per-layer outliers/{stat} logged")
    if handles:
        style.outside_legend(fig, list(handles.values()), list(handles))
    return fig


def make_figures(groups: list[Group], panels: list[str] | None = None) -> dict[str, Figure]:
    """The figures by name (FIGURES), with one colour and marker per variant in all; panels:
    glob patterns of the panel metrics drawn over steps (None: all)."""
    labels = [g.label for g in groups]
    colors, markers = style.colors(labels), style.markers(labels)
    return {"loss_curves": loss_curves_figure(groups, colors, markers),
            "outliers_vs_step": outliers_figure(groups, colors, markers, panels),
            "peak_growth": peak_growth_figure(groups, colors, markers),
            "layer_profile": layer_profile_figure(groups, colors, markers),
            "extreme_tokens": extreme_tokens_figure(groups, colors, markers)}
