"""Activation statistics of one hidden state h (B, T, C): pure functions, tensors in, numbers
out. Everything is computed per sequence, then averaged over the sequences, as the sources'
code does (one sequence at a time); a batch-wide maximum keeps a name that says so.

Sources:
- Sun et al. 2024, "Massive Activations in Large Language Models" (locuslab/massive-activations):
  per sequence top-1/2/3 and median |h|; massive activations |h| > 100 and >= 1000 x median.
- An et al. 2025, the seed paper (an-yongqi/systematic-outliers, pos_activation_outliers_layer.py):
  a token is an outlier when max_c |h_tc| > 1000 x the mean |h| of its sequence.
- Bondarenko et al. 2023, "Quantizable Transformers" (qualcomm-ai-research/outlier-free-transformers):
  kurtosis mu4 / sigma^4 and the infinity norm, per sequence, averaged over sequences.

Every function detaches and upcasts to float32 first; nothing builds an autograd graph.
"""

from __future__ import annotations

import math

import numpy as np
import torch

# mu4 / sigma^4 of each row, population moments (not excess): the one formula, shared with the
# training penalty of outlier_lab/models/regularizers.py (re-exported here for outlier_lab/metrics/weights.py)
from outlier_lab.models.regularizers import kurtosis_rows  # noqa: F401
from outlier_lab.metrics.partials import Peaks


def f32(x: torch.Tensor) -> torch.Tensor:
    return x.detach().float()


def sequences(x: torch.Tensor) -> torch.Tensor:
    """(B, N): one row per sequence for 3-D and higher tensors, one row in all for 1-D / 2-D."""
    return x.reshape(x.shape[0], -1) if x.dim() >= 3 else x.reshape(1, -1)


def median_rows(rows: torch.Tensor) -> torch.Tensor:
    """Exact median of each row; the mean of the two middle values when the count is even.
    numpy's partition selects both middle values in one linear-time pass (several times
    faster than two kthvalue calls or a sort)."""
    a = rows.detach().cpu().numpy()
    n = a.shape[1]
    middle = np.partition(a, [(n - 1) // 2, n // 2], axis=1)
    return torch.from_numpy((middle[:, (n - 1) // 2] + middle[:, n // 2]) / 2).to(rows.device)


SPREAD_RESOLUTION = 1e-6  # a row whose std is at most this x its rms has no spread that fp32 can tell


def kurtosis_per_row(rows: torch.Tensor) -> torch.Tensor:
    """(N,): the kurtosis of each row of (N, M), NaN for a row without a spread (every value
    equal, e.g. all zero; or differing only by float rounding, std <= 1e-6 x rms): it has no
    defined kurtosis (0 / 0; scipy.stats.kurtosis gives NaN)."""
    rows = rows.float()
    spread = rows.std(dim=1, correction=0) > SPREAD_RESOLUTION * rows.pow(2).mean(dim=1).sqrt()
    out = torch.full(rows.shape[:1], math.nan, device=rows.device)
    if spread.any():
        out[spread] = kurtosis_rows(rows[spread])
    return out


def mean_of_defined(values: torch.Tensor) -> float:
    """The mean of the entries that are not NaN (a row without a spread contributes nothing);
    NaN when none is."""
    defined = values[~values.isnan()]
    return defined.mean().item() if defined.numel() else math.nan


def mean_kurtosis(rows: torch.Tensor) -> float:
    """The mean kurtosis of the rows of (N, M) that have a spread; NaN when none has."""
    return mean_of_defined(kurtosis_per_row(rows))


def kurtosis(h: torch.Tensor) -> float:
    """Bondarenko et al.: per sequence over its T*C values, averaged over the sequences that
    have a spread (``mean_kurtosis``). A 1-D or 2-D tensor (a weight) counts as one sequence."""
    return mean_kurtosis(sequences(f32(h)))


def inf_norm(h: torch.Tensor) -> float:
    """Bondarenko et al.: per sequence ||h_b||_inf = max |h_b|, averaged over sequences."""
    return sequences(f32(h)).abs().amax(dim=1).mean().item()


def massive_mask(h: torch.Tensor, abs_threshold: float = 100.0, median_ratio: float = 1000.0,
                 medians: torch.Tensor | None = None) -> torch.Tensor:
    """Bool like h: Sun et al.'s massive activations, |h| > abs_threshold and >= median_ratio x
    the median |h| of its sequence (the interventions edit exactly what activation_stats counts);
    ``medians``: those medians when already known (``activation_rows``' "median")."""
    a = f32(h).abs()
    rows = sequences(a)
    return _massive(rows, median_rows(rows) if medians is None else medians, abs_threshold,
                    median_ratio).reshape(a.shape)


def _massive(rows: torch.Tensor, medians: torch.Tensor, abs_threshold: float, median_ratio: float) -> torch.Tensor:
    return (rows > abs_threshold) & (rows >= median_ratio * medians[:, None])


def activation_rows(h: torch.Tensor, abs_threshold: float = 100.0, median_ratio: float = 1000.0,
                    token_ratio: float = 1000.0) -> dict[str, torch.Tensor]:
    """The per-sequence values ``activation_summary`` turns into every activation statistic of
    h: for each sequence (row) its top-3 |h| (NaN-padded below 3 entries), median |h|, max |h|,
    counts of massive entries (with and without Sun et al.'s absolute bound) and of token
    outliers, and its kurtosis (NaN without a spread). Computed for any number of sequences
    at once, so the rows of several windows, concatenated, are the rows of all of them."""
    x = f32(h)
    rows = sequences(x.abs())
    k = min(3, rows.shape[1])
    top = torch.nn.functional.pad(rows.topk(k, dim=1).values, (0, 3 - k), value=math.nan)
    medians = median_rows(rows)
    big = rows >= median_ratio * medians[:, None]
    per_token = x.abs().amax(dim=-1).reshape(rows.shape[0], -1) if x.dim() >= 3 else rows.amax(dim=1, keepdim=True)
    return {"top": top, "median": medians, "max": rows.amax(dim=1),
            "massive": _massive(rows, medians, abs_threshold, median_ratio).sum(dim=1),
            "massive_ratio": (big & (rows > 0)).sum(dim=1),
            "token_outliers": (per_token > token_ratio * rows.mean(dim=1, keepdim=True)).sum(dim=1),
            "kurtosis": kurtosis_per_row(sequences(x))}


def activation_summary(rows: dict[str, torch.Tensor]) -> dict[str, float]:
    """Every per-tensor activation statistic from ``activation_rows``, per sequence then
    averaged over sequences:

    - top1, top2, top3, median: the largest |h| values and the median |h| of each sequence,
      averaged over sequences (Sun et al.); top1_over_median = top1 / median of those
      averages (inf when the median is 0); max_abs: the largest |h| in the whole batch.
    - massive: entries with |h| > abs_threshold and |h| >= median_ratio x their sequence's
      median (Sun et al.), summed over sequences; massive_ratio: the same without the
      absolute bound (nonzero entries only), the curve to watch at small scale.
    - token_outliers: tokens whose max_c |h_tc| > token_ratio x their sequence's mean |h|
      (seed code), summed over sequences.
    - kurtosis, inf_norm: Bondarenko et al., as above.
    """
    top = rows["top"].mean(dim=0).tolist()
    med = rows["median"].mean().item()
    return {
        "top1": top[0], "top2": top[1], "top3": top[2], "median": med,
        "top1_over_median": top[0] / med if med > 0 else math.inf,
        "max_abs": rows["max"].max().item(),
        "massive": int(rows["massive"].sum()),
        "massive_ratio": int(rows["massive_ratio"].sum()),
        "token_outliers": int(rows["token_outliers"].sum()),
        "kurtosis": mean_of_defined(rows["kurtosis"]),
        "inf_norm": rows["max"].mean().item(),
    }


def activation_stats(h: torch.Tensor, abs_threshold: float = 100.0, median_ratio: float = 1000.0,
                     token_ratio: float = 1000.0) -> dict[str, float]:
    """``activation_summary`` of one tensor h (B, T, C)."""
    return activation_summary(activation_rows(h, abs_threshold, median_ratio, token_ratio))


def token_outliers(h: torch.Tensor, ratio: float = 1000.0) -> list[tuple[int, int]]:
    """(b, t) of every token with max_c |h_btc| > ratio x the mean |h| of sequence b (seed code)."""
    a = f32(h).abs()
    hits = a.amax(dim=-1) > ratio * a.mean(dim=(1, 2))[:, None]
    return [(b, t) for b, t in hits.nonzero().tolist()]


def channel_max(h: torch.Tensor) -> torch.Tensor:
    """(C,): the largest |h| of each channel (the last axis) of h (..., C)."""
    return f32(h).abs().flatten(0, -2).amax(dim=0)


def channel_peaks(h: torch.Tensor, positions: torch.Tensor | None = None) -> tuple[torch.Tensor, Peaks]:
    """What ``top_channel`` needs of h (B, T, C), for any number of sequences at once: the
    largest |h| of each channel (C,), and the entries with their channel and position class
    (-1 without ``positions``) that are at or above half the largest |h| (``partials.Peaks``:
    over several windows, at or above half the running maximum)."""
    a = f32(h).abs()
    labels = torch.full(a.shape[:2], -1, dtype=torch.long, device=a.device) if positions is None \
        else positions.to(a.device).long()
    near = a >= 0.5 * a.max()
    b, t, c = near.nonzero(as_tuple=True)
    return channel_max(h), Peaks.of(a[b, t, c], torch.stack([c, labels[b, t]], dim=1))


def top_channel_of(channel_max: torch.Tensor, peaks: Peaks, n_classes: int = 4) -> dict:
    """``top_channel`` from ``channel_peaks`` (of one batch, or merged over windows)."""
    channel = int(channel_max.argmax())
    value = channel_max[channel]
    labels = peaks.labels[(peaks.labels[:, 0] == channel) & (peaks.values >= 0.5 * value)][:, 1]
    if labels.numel() and labels.min() < 0:
        shares = [math.nan] * n_classes
    else:
        shares = (torch.bincount(labels, minlength=n_classes).float() / labels.numel()).tolist()
    return {"channel": channel, "value": value.item(), "shares": shares}


def top_channel(h: torch.Tensor, positions: torch.Tensor | None = None, n_classes: int = 4) -> dict:
    """The channel with the largest max_{b,t} |h_btc| (the seed paper finds it on the first
    token and on delimiters) and, over the (b, t) where that channel's |h| >= half its max,
    the share of each position class (``positions`` (B, T) from ``tokens.position_classes``;
    nan shares without it)."""
    return top_channel_of(*channel_peaks(h, positions), n_classes)


def norm_ratio_to_others(x: torch.Tensor) -> torch.Tensor:
    """||x_0|| / median_{j >= 1} ||x_j|| over the token axis -2 of x (..., T, D), for each
    leading index: Guo et al. 2024's value-state drain (v of a head) and residual-state peak
    (h of a layer) on the first token."""
    norms = f32(x).norm(dim=-1)  # (..., T)
    flat = norms.reshape(-1, norms.shape[-1])
    return (flat[:, 0] / median_rows(flat[:, 1:])).reshape(norms.shape[:-1])
