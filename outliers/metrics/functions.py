"""Outlier metrics: pure functions, tensors in, plain Python numbers or small tensors out.

Definitions: docs/metrics.md. Sources:
- seed:        An et al. 2025, "Systematic Outliers in Large Language Models" (and its code)
- Sun:         Sun et al. 2024, "Massive Activations in Large Language Models"
- Bondarenko:  Bondarenko et al. 2023, "Quantizable Transformers"
- Gu:          Gu et al. 2025, "When Attention Sink Emerges in Language Models"

Shapes: h is a hidden state (B, T, C); W a Linear weight (out, in); p attention
probabilities (B, H, T, T) on the real keys (a row may sum to less than 1).
Every function detaches and upcasts to float32 first, so any float dtype and tensors
that require grad are fine; nothing here builds an autograd graph.
"""

from __future__ import annotations

import math

import numpy as np
import torch

DELIMITER_IDS = (10, 46, 44, 32)  # byte ids of "\n", ".", ",", " "


def _f32(x: torch.Tensor) -> torch.Tensor:
    return x.detach().float()


def _median(x: torch.Tensor) -> float:
    """Exact median of all entries; the mean of the two middle values when the count is even.
    numpy's partition selects both middle values in one linear-time pass (3x faster than
    two torch.kthvalue calls, 10x faster than a sort)."""
    a = x.detach().flatten().cpu().numpy()
    n = a.size
    middle = np.partition(a, [(n - 1) // 2, n // 2])
    return float((middle[(n - 1) // 2] + middle[n // 2]) / 2)


def _sequences(x: torch.Tensor) -> torch.Tensor:
    """(B, N) view: one row per sequence for 3-D and higher tensors, one row in all for 1-D / 2-D."""
    return x.reshape(x.shape[0], -1) if x.dim() >= 3 else x.reshape(1, -1)


def _per_sequence_kurtosis(rows: torch.Tensor) -> torch.Tensor:
    d = rows - rows.mean(dim=1, keepdim=True)
    m2 = d.pow(2).mean(dim=1)
    m4 = d.pow(4).mean(dim=1)
    return m4 / m2.pow(2)


# ----------------------------------------------------------------------------- activations


def top_abs(h: torch.Tensor, k: int = 3) -> list[float]:
    """The k largest |h| over the whole tensor, descending (fewer if h has fewer entries)."""
    a = _f32(h).abs().flatten()
    return a.topk(min(k, a.numel())).values.tolist()


def median_abs(h: torch.Tensor) -> float:
    """Exact median of |h| over all entries (mean of the two middle values for an even count)."""
    return _median(_f32(h).abs())


def massive_count(h: torch.Tensor, abs_threshold: float = 100.0, median_ratio: float = 1000.0) -> int:
    """Massive activations (Sun et al. 2024): entries with |h| > abs_threshold AND
    |h| >= median_ratio * median|h|. abs_threshold = 0 means "ratio only" (zeros never count)."""
    a = _f32(h).abs()
    return int(((a > abs_threshold) & (a >= median_ratio * _median(a))).sum())


def massive_ratio_count(h: torch.Tensor, median_ratio: float = 1000.0) -> int:
    """The ratio-only curve of Sun et al.'s criterion: nonzero entries with
    |h| >= median_ratio * median|h| (= massive_count with abs_threshold 0)."""
    return massive_count(h, 0.0, median_ratio)


def token_outliers(h: torch.Tensor, ratio: float = 1000.0) -> list[tuple[int, int]]:
    """Token-level outliers (seed code): (b, t) of every token with max_c |h_btc| > ratio * mean|h|,
    the mean taken over the whole tensor (outliers included). h is (B, T, C)."""
    a = _f32(h).abs()
    hits = a.amax(dim=-1) > ratio * a.mean()
    return [(b, t) for b, t in hits.nonzero().tolist()]


def kurtosis(h: torch.Tensor) -> float:
    """Kurtosis (Bondarenko et al. 2023): per sequence b, over its flattened T*C values,
    mu4 / sigma^4 with population moments (not excess; a Gaussian gives 3), averaged over
    sequences. A 1-D or 2-D tensor (a weight) counts as one sequence."""
    return _per_sequence_kurtosis(_sequences(_f32(h))).mean().item()


def weight_kurtosis(W: torch.Tensor) -> float:
    """mu4 / sigma^4 (population moments, not excess) of all entries of W (Bondarenko et al. 2023)."""
    return _per_sequence_kurtosis(_f32(W).reshape(1, -1)).item()


def inf_norm(h: torch.Tensor) -> float:
    """Per sequence ||h_b||_inf = max |h_b|, averaged over sequences (Bondarenko et al. 2023;
    their "max inf norm" is the max of this over layers, taken by the caller)."""
    return _sequences(_f32(h)).abs().amax(dim=1).mean().item()


def activation_stats(
    h: torch.Tensor,
    abs_threshold: float = 100.0,
    median_ratio: float = 1000.0,
    token_ratio: float = 1000.0,
) -> dict[str, float]:
    """Every activation metric above from one upcast copy of |h|:
    top1, top2, top3, median, top1_over_median (inf when the median is 0), massive
    (Sun et al.), massive_ratio (ratio only), token_outliers (count, seed code),
    kurtosis and inf_norm (Bondarenko et al.). Counts are ints."""
    x = _f32(h)
    a = x.abs()
    top = a.flatten().topk(min(3, a.numel())).values.tolist()
    top += [math.nan] * (3 - len(top))
    med = _median(a)
    big = a[a >= median_ratio * med]  # the few entries that pass the ratio test
    return {
        "top1": top[0],
        "top2": top[1],
        "top3": top[2],
        "median": med,
        "top1_over_median": top[0] / med if med > 0 else math.inf,
        "massive": int((big > abs_threshold).sum()),
        "massive_ratio": int((big > 0).sum()),
        "token_outliers": int((a.amax(dim=-1) > token_ratio * a.mean()).sum()),
        "kurtosis": _per_sequence_kurtosis(_sequences(x)).mean().item(),
        "inf_norm": _sequences(a).amax(dim=1).mean().item(),
    }


def top_channels(
    h: torch.Tensor,
    k: int = 3,
    tokens: torch.Tensor | None = None,
    delimiter_ids: tuple[int, ...] = DELIMITER_IDS,
) -> list[dict]:
    """Outlier channels (seed paper: they sit on the first token and on delimiters).

    The k distinct channels with the largest max_{b,t} |h_btc|, in descending order. Each
    dict: channel; value = that max; batch, position = where it occurs; kind = "initial"
    if position == 0, else "delimiter" if tokens (B, T) is given and tokens[batch, position]
    is in delimiter_ids, else "other". Over the (b, t) where the channel's |h| >= 0.5 * value:
    share_initial = fraction with t == 0; share_delimiter = fraction with t >= 1 on a
    delimiter token (so the shares are exclusive, like kind; nan without tokens)."""
    a = _f32(h).abs()
    B, T, C = a.shape
    channel_max = a.amax(dim=(0, 1))
    is_delim = None
    if tokens is not None:
        is_delim = torch.isin(tokens.to(a.device), torch.tensor(delimiter_ids, device=a.device))
        is_delim[:, 0] = False  # position 0 is "initial" whatever its token
    out = []
    for c in channel_max.topk(min(k, C)).indices.tolist():
        col = a[:, :, c]
        value = channel_max[c].item()
        b, t = divmod(col.flatten().argmax().item(), T)
        if t == 0:
            kind = "initial"
        elif is_delim is not None and is_delim[b, t]:
            kind = "delimiter"
        else:
            kind = "other"
        near = col >= 0.5 * value
        n_near = near.sum().item()
        share_initial = near[:, 0].sum().item() / n_near
        share_delimiter = (near & is_delim).sum().item() / n_near if is_delim is not None else math.nan
        out.append(dict(channel=c, value=value, batch=b, position=t, kind=kind,
                        share_initial=share_initial, share_delimiter=share_delimiter))
    return out


# ----------------------------------------------------------------------------- weights


def weight_column_ratio(W: torch.Tensor) -> tuple[float, int]:
    """Column outliers (seed paper's down_proj measure): c_j = max_i |W_ij| per column j
    (columns = input channels); returns (max_j c_j / mean_j c_j, argmax_j c_j)."""
    c = _f32(W).abs().amax(dim=0)
    return (c.max() / c.mean()).item(), int(c.argmax())


def weight_row_ratio(W: torch.Tensor) -> tuple[float, int]:
    """Row outliers: r_i = max_j |W_ij| per row i (rows = output channels);
    returns (max_i r_i / mean_i r_i, argmax_i r_i)."""
    return weight_column_ratio(W.t())


def weight_stats(W: torch.Tensor) -> dict[str, float]:
    """col_ratio, col_argmax, row_ratio, row_argmax (see above; argmaxes are ints),
    kurtosis (mu4 / sigma^4 of all entries, Bondarenko et al.) and max_abs = max |W|."""
    col_ratio, col_argmax = weight_column_ratio(W)
    row_ratio, row_argmax = weight_row_ratio(W)
    return {
        "col_ratio": col_ratio,
        "col_argmax": col_argmax,
        "row_ratio": row_ratio,
        "row_argmax": row_argmax,
        "kurtosis": weight_kurtosis(W),
        "max_abs": _f32(W).abs().max().item(),
    }


def channel_alignment(down_input: torch.Tensor, W_down: torch.Tensor) -> dict:
    """Whether the top activation channel of the FFN down projection's input (B, T, 4C)
    (argmax_c max_{b,t} |h_btc|) is the top column of W_down (C, 4C) (argmax_j max_i |W_ij|);
    the seed paper reports these coincide. weight_rank is the 0-based rank of act_channel
    among the columns sorted by max_i |W_ij| descending (= how many columns are larger)."""
    if down_input.shape[-1] != W_down.shape[1]:
        raise ValueError(f"down_input has {down_input.shape[-1]} channels, W_down {W_down.shape[1]} columns")
    act_channel = int(_f32(down_input).abs().flatten(0, -2).amax(dim=0).argmax())
    c = _f32(W_down).abs().amax(dim=0)
    weight_column = int(c.argmax())
    return {
        "act_channel": act_channel,
        "weight_column": weight_column,
        "aligned": act_channel == weight_column,
        "weight_rank": int((c > c[act_channel]).sum()),
    }


# ----------------------------------------------------------------------------- attention


def first_token_share(p: torch.Tensor) -> torch.Tensor:
    """(H,): per head, the mean over batch and queries i >= 1 of p[:, h, i, 0] (the sink share)."""
    return _f32(p)[:, :, 1:, 0].mean(dim=(0, 2))


def sink_rate(shares: torch.Tensor, eps: float = 0.3) -> float:
    """Fraction of entries of shares (first-token shares, e.g. (L, H)) that are > eps
    (Gu et al. 2025, eps = 0.3)."""
    return (_f32(torch.as_tensor(shares)) > eps).float().mean().item()


def attention_outlier_keys(p: torch.Tensor, ratio: float = 0.1) -> list[int]:
    """Attention outliers (seed code): acc_j = sum_i mean_{b,h} p_bhij; key j is an outlier
    when acc_j >= ratio * T. Returns the keys in ascending order."""
    T = p.shape[-1]
    acc = _f32(p).mean(dim=(0, 1)).sum(dim=0)
    return (acc >= ratio * T).nonzero().flatten().tolist()


def attention_entropy(p: torch.Tensor) -> torch.Tensor:
    """(H,): per head, the mean over batch and rows of -sum_j p_ij log p_ij, 0 log 0 = 0.
    Rows summing to less than 1 are used as they are (not renormalised); p >= 0 assumed."""
    x = _f32(p)
    return -torch.xlogy(x, x).sum(dim=-1).mean(dim=(0, 2))


def null_mass(p: torch.Tensor) -> torch.Tensor:
    """(H,): per head, the mean over batch and rows of 1 - sum_j p_ij, clamped at 0 from below
    (the "attend to nothing" share of softmax1, sink, attn_bias, softpick, clipped softmax)."""
    return (1 - _f32(p).sum(dim=-1)).clamp(min=0).mean(dim=(0, 2))


def value_stats(t: torch.Tensor) -> dict[str, float]:
    """mean, min and max over all entries (for explicit-scale factors and gate values)."""
    x = _f32(t)
    return {"mean": x.mean().item(), "min": x.min().item(), "max": x.max().item()}
