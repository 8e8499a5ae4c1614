"""One figure style for the OutlierMonitor's plots (``outlier_lab.monitor.plots``) and the offline
report's figures (``outlier_lab.report.figures``), so that the two sets look alike and each
styling decision is made once.

Figures are ``matplotlib.figure.Figure`` objects built directly (Agg canvas, no pyplot
state): nothing is registered globally and nothing leaks when callers drop them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

DPI = 110
MARKERS = "osD^vP*Xph<>"
LOG_SPAN = 20  # a panel goes log-scale when its positive values span more than this factor


def new_figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


def save(fig: Figure, path: Path) -> Path:
    """Write fig as a PNG at the shared resolution, creating the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return path


def colors(labels: Sequence[str]) -> dict[str, tuple]:
    """A distinct colour per label, in order (tab10, tab20 beyond ten labels)."""
    from matplotlib import colormaps

    cmap = colormaps["tab10" if len(labels) <= 10 else "tab20"]
    return {label: cmap(i % cmap.N) for i, label in enumerate(labels)}


def markers(labels: Sequence[str]) -> dict[str, str]:
    """A marker per label too, so that overlapping lines stay distinguishable."""
    return {label: MARKERS[i % len(MARKERS)] for i, label in enumerate(labels)}


def marker_style(marker: str, n_points: int, size: float = 4) -> dict:
    """Markers on about 12 points of a line: enough to tell overlapping lines apart."""
    return dict(marker=marker, markersize=size, markevery=max(1, n_points // 12))


def no_data(ax, text: str = "no data") -> None:
    """An empty panel that says why it is empty."""
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="gray")
    ax.set_xticks([]), ax.set_yticks([])


def step_panel(ax, title: str, title_size: float = 10) -> None:
    """A small panel of values over training steps."""
    ax.set_title(title, fontsize=title_size)
    ax.set_xlabel("step", fontsize=8)
    ax.tick_params(labelsize=8)
    ax.grid(True, alpha=0.3)


def log_scale_if_wide(ax, values: np.ndarray) -> bool:
    """Log y when the finite values are positive and span more than LOG_SPAN (outlier
    metrics grow by decades); returns whether it did."""
    finite = values[np.isfinite(values)]
    if finite.size and finite.min() > 0 and finite.max() / finite.min() > LOG_SPAN:
        ax.set_yscale("log")
        return True
    return False


def layer_axes(ax, ylabel: str) -> None:
    """Magnitudes per layer: log y (non-positive values masked), integer layer ticks."""
    ax.set_yscale("log", nonpositive="mask")
    ax.set_xlabel("layer")
    ax.set_ylabel(ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    lo, hi = ax.get_xlim()
    if hi - lo < 2:  # one or two layers: whole-number ticks need some room
        ax.set_xlim((lo + hi) / 2 - 1, (lo + hi) / 2 + 1)
    ax.grid(True, which="major", alpha=0.3)


def outside_legend(fig: Figure, handles: list, labels: list) -> None:
    """The figure's legend to the right of its panels, two columns beyond 16 entries."""
    fig.legend(handles, labels, loc="outside right upper", fontsize="small", frameon=False,
               ncols=1 if len(labels) <= 16 else 2)
