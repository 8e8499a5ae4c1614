"""Fake quantizers (pure tensor functions): quantize to an integer grid, then dequantize back
to float, so the result has the input's dtype and differs from it only by the rounding error.
Both compute in float32 and round half to even.

The integer grid (rounding, zero point, clamping) is torch's fake quantizer. The division by
the scale and the multiplication back stay here, see ``_round_to_grid``.
"""

from __future__ import annotations

import torch


def _round_to_grid(y: torch.Tensor, zero_point: int, qmin: int, qmax: int) -> torch.Tensor:
    """clamp(round(y) + zero_point, qmin, qmax) - zero_point for a float32 ``y`` (= x / scale),
    by ``torch.fake_quantize_per_tensor_affine`` with unit scale; NaN stays NaN.

    Why unit scale, with the caller dividing by the scale: torch's kernels (per tensor and per
    channel alike) multiply x by a float32 reciprocal of the scale instead of dividing by it. That
    differs from x / scale in the last bit, which moves a value within one ulp of a half step to
    the other integer (measured: 13072 of 355600 values placed near half steps; on the tests'
    trained model 1 of 3.7 million activations, smooth_w8a8 ppl +1e-6), so the numbers of the
    protocols would change. With unit scale the kernel's product is exact.
    Why the NaN restore: the kernel casts to an integer, which turns NaN into the bottom of the
    grid, a finite value; a NaN activation must stay NaN.
    """
    q = torch.fake_quantize_per_tensor_affine(y, 1.0, zero_point, qmin, qmax)
    return torch.where(y.isnan(), y, q)


def quantize_symmetric(x: torch.Tensor, bits: int, dim: int | None = None) -> torch.Tensor:
    """Symmetric abs-max fake quantization to signed ``bits``-bit integers.

    scale = max|x| / (2^(bits-1) - 1), over the whole tensor (``dim=None``) or separately for
    each slice ``x.select(dim, i)`` (for a Linear weight (out, in), ``dim=0`` gives one scale
    per output channel, i.e. per row); q = clamp(round(x / scale), -qmax, qmax) * scale with
    qmax = 2^(bits-1) - 1. An all-zero tensor or slice stays zero. Computed in float32 and
    returned in x's dtype.
    """
    qmax = 2 ** (bits - 1) - 1
    x32 = x.float()
    if dim is None:
        amax = x32.abs().amax()
    else:
        others = [d for d in range(x.dim()) if d != dim % x.dim()]
        amax = x32.abs().amax(dim=others, keepdim=True) if others else x32.abs()
    scale = torch.where(amax > 0, amax / qmax, torch.ones_like(amax))  # zero slice: 0 / 1 stays 0
    # Per channel too: the scales broadcast in the division, so the per-tensor grid serves both
    # (torch.fake_quantize_per_channel_affine would bring back the reciprocal, see _round_to_grid).
    # copysign: a value rounded to zero keeps its sign (-0.), as round() gives; torch's grid gives +0.
    y = x32 / scale
    return (_round_to_grid(y, 0, -qmax, qmax).copysign(y) * scale).to(x.dtype)


def quantize_asymmetric(x: torch.Tensor, bits: int, lo: float, hi: float) -> torch.Tensor:
    """Asymmetric (affine) min-max fake quantization to unsigned ``bits``-bit integers.

    scale = (hi - lo) / (2^bits - 1), zero_point = round(-lo / scale);
    q = (clamp(round(x / scale) + zero_point, 0, 2^bits - 1) - zero_point) * scale.
    Values outside [lo, hi] are clipped to the end of the grid. A degenerate range
    (hi == lo) maps everything to lo. Computed in float32 and returned in x's dtype.
    """
    lo, hi = float(lo), float(hi)
    levels = 2**bits - 1
    scale = (hi - lo) / levels
    if scale <= 0:  # no grid at all; torch's quantizers reject a zero scale
        return torch.full_like(x, lo)
    zero_point = round(-lo / scale)
    y = x.float() / scale
    if 0 <= zero_point <= levels:
        q = _round_to_grid(y, zero_point, 0, levels)
    else:  # a range without 0 (lo > 0 or hi < 0): torch requires the zero point on the grid
        q = (y.round() + zero_point).clamp(0, levels) - zero_point
    return (q * scale).to(x.dtype)


def quantize_to_range(x: torch.Tensor, bits: int, lo: float, hi: float) -> torch.Tensor:
    """Bondarenko et al.'s weight quantizer for a range [lo, hi] with lo = -hi or lo = 0, as
    their MSE search proposes it (``ranges.mse_weight_range``): their SymmetricUniformQuantizer
    (quantization/quantizers/uniform_quantizers.py in their code).

    lo < 0, a signed grid: scale = hi / (2^(bits-1) - 1) and q = clamp(round(x / scale),
    -2^(bits-1), 2^(bits-1) - 1) * scale, the full signed range, one level more below zero
    than ``quantize_symmetric``'s. lo = 0 (a tensor without negative values), an unsigned grid:
    scale = hi / (2^bits - 1), q = clamp(round(x / scale), 0, 2^bits - 1) * scale. hi <= 0
    gives zeros. Computed in float32 and returned in x's dtype.
    """
    lo, hi = float(lo), float(hi)
    if hi <= 0:
        return torch.zeros_like(x)
    if lo >= 0:
        return quantize_asymmetric(x, bits, 0.0, hi)  # zero point 0: the unsigned grid
    qmax = 2 ** (bits - 1) - 1
    scale = max(-lo, hi) / qmax
    y = x.float() / scale
    return (_round_to_grid(y, 0, -qmax - 1, qmax).copysign(y) * scale).to(x.dtype)
