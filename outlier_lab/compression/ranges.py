"""Range estimators of Bondarenko et al.'s W8A8 (their quantization/range_estimators.py):
the MSE search for a weight's range, and the running min-max (optionally percentile) range of
an activation over calibration batches. Pure functions and one small class on tensors.
"""

from __future__ import annotations

import math

import torch

from outlier_lab.compression.quantizers import quantize_to_range

MOMENTUM = 0.9  # their RunningMinMaxEstimator's default, which their validation scripts keep


def mse_weight_range(w: torch.Tensor, bits: int = 8, candidates: int = 100, margin: float = 0.5) -> tuple[float, float]:
    """The clipping range of a weight tensor that minimises the squared error of its fake
    quantization, by their MSE_Estimator's grid search (opt_method=grid, the defaults
    num_candidates=100 and range_margin=0.5; the symmetric weight quantizer makes it 1-D).

    With m = max(|min w|, max w) + margin (an absolute margin, in the weight's units), the
    candidates are c_k = k * m / candidates for k = 1..candidates: the range [-c_k, c_k], or
    [0, c_k] when w has no negative value (their "one-sided" case). Each is scored by
    sum((w - quantize_to_range(w, bits, lo, c_k))^2); the first lowest wins. Returns (lo, hi).
    """
    w32 = w.detach().float()
    one_sided = bool(w32.min() >= 0)
    step = (max(-w32.min().item(), w32.max().item()) + margin) / candidates
    best, best_error = (0.0, 0.0), math.inf
    for k in range(1, candidates + 1):
        hi = step * k
        lo = 0.0 if one_sided else -hi
        error = (w32 - quantize_to_range(w32, bits, lo, hi).float()).pow(2).sum().item()
        if error < best_error:  # strict: ties keep the smaller range, as their argmin
            best, best_error = (lo, hi), error
    return best


def quantile_from_top(top: torch.Tensor, n: int, q: float) -> float:
    """The q-quantile (linear interpolation, as torch.quantile) of n values, given their
    largest ones sorted descending; needs at least n - floor(q (n-1)) of them."""
    pos = q * (n - 1)
    below = math.floor(pos)
    value = top[n - 1 - below].item()
    if pos > below:
        value += (pos - below) * (top[n - 2 - below].item() - value)
    return value


def tail_percentiles(x: torch.Tensor, percentile: float) -> tuple[float, float]:
    """The (100 - p)th and pth percentiles of all values of x, exact (linear interpolation,
    as numpy's percentile that their estimator calls, and torch.quantile). Only the tails are
    sorted: torch.quantile sorts everything and takes at most 2^24 values, fewer than one
    batch of attention probabilities of a GPT-2."""
    values = x.detach().flatten().float()
    n, q = values.numel(), percentile / 100
    needed = n - math.floor(q * (n - 1))
    hi = quantile_from_top(values.topk(needed).values, n, q)
    lo = -quantile_from_top((-values).topk(needed).values, n, q)  # quantile(x, 1 - q) = -quantile(-x, q)
    return lo, hi


class RunningRange:
    """Their RunningMinMaxEstimator: each batch's (lo, hi), the min and max of the tensor or,
    with ``percentile`` p, its (100 - p)th and pth percentiles; the first batch's taken as
    is, then r <- momentum * r + (1 - momentum) * r_batch for each later batch.

    ``quant_range`` widens it to include 0, as their asymmetric quantizer does before it
    sets its grid (so that 0, e.g. a masked attention weight, stays exactly 0)."""

    def __init__(self, percentile: float | None = None, momentum: float = MOMENTUM):
        self.percentile, self.momentum = percentile, momentum
        self.lo: float | None = None
        self.hi: float | None = None

    def update(self, x: torch.Tensor) -> None:
        if self.percentile is None:
            lo, hi = x.detach().min().item(), x.detach().max().item()
        else:
            lo, hi = tail_percentiles(x, self.percentile)
        if self.lo is None:
            self.lo, self.hi = lo, hi
        else:
            self.lo = self.momentum * self.lo + (1 - self.momentum) * lo
            self.hi = self.momentum * self.hi + (1 - self.momentum) * hi

    def quant_range(self) -> tuple[float, float]:
        return min(self.lo, 0.0), max(self.hi, 0.0)
