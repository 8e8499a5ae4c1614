"""Weight statistics of one Linear weight W (out, in): pure functions.

Source: An et al. 2025, the seed paper (an-yongqi/systematic-outliers; its weight-outlier
figures of the FFN down projection): a weight outlier is a column j (input channel) whose
largest |W_ij| stands out *within that column*: r_j = max_i |W_ij| / mean_i |W_ij|. The
ratio is scale-invariant per column, so a column that is large as a whole is not an
outlier (r = 1 for a constant column). Rows (output channels) the same way. Kurtosis
mu4 / sigma^4 of all entries follows Bondarenko et al. 2023.
"""

from __future__ import annotations

import math

import torch

from outlier_lab.metrics.activations import SPREAD_RESOLUTION, f32, median_rows


BLOCK_ENTRIES = 1 << 22  # a block of rows at a time: float32 copies of one block (16 MB), never of a whole matrix


def row_blocks(W: torch.Tensor):
    """The rows of W (out, in) in consecutive blocks of about BLOCK_ENTRIES entries, as float32."""
    step = max(1, BLOCK_ENTRIES // max(W.shape[1], 1))
    for start in range(0, W.shape[0], step):
        yield f32(W[start:start + step])


def column_extremes(W: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(in,) max_i |W_ij| and (in,) mean_i |W_ij| of every column j, a block of rows at a time."""
    top, total = torch.zeros(W.shape[1]), torch.zeros(W.shape[1], dtype=torch.float64)
    for block in row_blocks(W):
        a = block.abs()
        top, total = torch.maximum(top, a.amax(dim=0).cpu()), total + a.sum(dim=0, dtype=torch.float64).cpu()
    return top, (total / W.shape[0]).float()


def column_ratios(W: torch.Tensor) -> torch.Tensor:
    """(in,): r_j = max_i |W_ij| / mean_i |W_ij| for every column j (nan for an all-zero column)."""
    top, mean = column_extremes(W)
    return top / mean


def entry_kurtosis(W: torch.Tensor) -> float:
    """mu4 / sigma^4 of all entries of W, population moments (``kurtosis_rows`` of W as one
    row), accumulated in float64 over row blocks; NaN without a spread (std <= 1e-6 x rms,
    as ``activations.mean_kurtosis``)."""
    n = W.numel()
    mean = sum(block.sum(dtype=torch.float64) for block in row_blocks(W)) / n
    m2 = m4 = 0.0
    for block in row_blocks(W):
        d2 = (block.double() - mean).pow(2)
        m2, m4 = m2 + d2.sum(), m4 + d2.pow(2).sum()
    m2, m4 = float(m2) / n, float(m4) / n
    spread = m2 > SPREAD_RESOLUTION ** 2 * (m2 + float(mean) ** 2)
    return m4 / m2 ** 2 if spread else math.nan


def weight_stats(W: torch.Tensor) -> dict[str, float]:
    """col_ratio (max over columns of the seed ratio), col_ratio_median, col_argmax (the
    column with the largest ratio), the same for rows, kurtosis, and max_abs = max |W|; a
    block of rows at a time (``row_blocks``), so a 32k-vocabulary head needs no float32 copy."""
    top, mean = column_extremes(W)
    cols, rows = top / mean, column_ratios(W.t())
    return {
        "col_ratio": cols.max().item(), "col_ratio_median": median_rows(cols[None]).item(),
        "col_argmax": int(cols.argmax()),
        "row_ratio": rows.max().item(), "row_ratio_median": median_rows(rows[None]).item(),
        "row_argmax": int(rows.argmax()),
        "kurtosis": entry_kurtosis(W),
        "max_abs": top.max().item(),
    }


def channel_alignment(act_max: torch.Tensor, W_down: torch.Tensor) -> dict:
    """Whether the top activation channel of the FFN down projection's input, argmax_c of
    ``act_max`` (hidden,), the largest |x| of each input channel over the probe
    (``activations.channel_max``), is the top weight column of W_down (C, hidden) by the seed
    ratio (the seed paper finds they coincide). weight_rank: how many columns have a larger
    ratio than the activation's channel (0 when aligned)."""
    if act_max.shape[-1] != W_down.shape[1]:
        raise ValueError(f"the down projection's input has {act_max.shape[-1]} channels, "
                         f"W_down {W_down.shape[1]} columns")
    act_channel = int(act_max.argmax())
    ratios = column_ratios(W_down)
    weight_column = int(ratios.argmax())
    return {"act_channel": act_channel, "weight_column": weight_column, "aligned": act_channel == weight_column,
            "weight_rank": int((ratios > ratios[act_channel]).sum())}
