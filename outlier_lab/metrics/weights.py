"""Weight statistics of one Linear weight W (out, in): pure functions.

Source: An et al. 2025, the seed paper (an-yongqi/systematic-outliers; its weight-outlier
figures of the FFN down projection): a weight outlier is a column j (input channel) whose
largest |W_ij| stands out *within that column*: r_j = max_i |W_ij| / mean_i |W_ij|. The
ratio is scale-invariant per column, so a column that is large as a whole is not an
outlier (r = 1 for a constant column). Rows (output channels) the same way. Kurtosis
mu4 / sigma^4 of all entries follows Bondarenko et al. 2023.
"""

from __future__ import annotations

import torch

from outlier_lab.metrics.activations import f32, mean_kurtosis, median_rows


def column_ratios(W: torch.Tensor) -> torch.Tensor:
    """(in,): r_j = max_i |W_ij| / mean_i |W_ij| for every column j (nan for an all-zero column)."""
    a = f32(W).abs()
    return a.amax(dim=0) / a.mean(dim=0)


def weight_stats(W: torch.Tensor) -> dict[str, float]:
    """col_ratio (max over columns of the seed ratio), col_ratio_median, col_argmax (the
    column with the largest ratio), the same for rows, kurtosis, and max_abs = max |W|."""
    cols, rows = column_ratios(W), column_ratios(W.t())
    return {
        "col_ratio": cols.max().item(), "col_ratio_median": median_rows(cols[None]).item(),
        "col_argmax": int(cols.argmax()),
        "row_ratio": rows.max().item(), "row_ratio_median": median_rows(rows[None]).item(),
        "row_argmax": int(rows.argmax()),
        "kurtosis": mean_kurtosis(f32(W).reshape(1, -1)),
        "max_abs": f32(W).abs().max().item(),
    }


def channel_alignment(down_input: torch.Tensor, W_down: torch.Tensor) -> dict:
    """Whether the top activation channel of the FFN down projection's input (B, T, hidden),
    argmax_c max_{b,t} |h_btc|, is the top weight column of W_down (C, hidden) by the seed
    ratio (the seed paper finds they coincide). weight_rank: how many columns have a larger
    ratio than the activation's channel (0 when aligned)."""
    if down_input.shape[-1] != W_down.shape[1]:
        raise ValueError(f"down_input has {down_input.shape[-1]} channels, W_down {W_down.shape[1]} columns")
    act_channel = int(f32(down_input).abs().flatten(0, -2).amax(dim=0).argmax())
    ratios = column_ratios(W_down)
    weight_column = int(ratios.argmax())
    return {"act_channel": act_channel, "weight_column": weight_column, "aligned": act_channel == weight_column,
            "weight_rank": int((ratios > ratios[act_channel]).sum())}
