"""What every fused kernel shares: input preparation, launch sizes, and the tile helpers.

Layout: q, k, v, o and their gradients are contiguous (B, H, T, d) tensors, so head
``bh`` starts at ``bh * T * d`` and rows are ``d`` apart; per-row statistics are
contiguous (B * H, T) float32 tensors. Programs run on the grid (row blocks, B * H).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from outlier_lab.kernels.triton import interpreting

DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# Decided once, like triton.jit decides for the kernels defined after this import.
INTERPRETED = interpreting()


def prepare(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
    """(q, k, v, out_dtype): one compute dtype and contiguous memory for q, k, v (copies
    only what needs it), and the dtype of the output.

    Under autocast q and k can come out of rotary embeddings in float32 while v is in the
    autocast dtype; the kernels then run in the autocast dtype, as the eager matmuls would.
    In the interpreter bfloat16 runs in float32: it stores bfloat16 as raw bits and its
    tl.dot multiplies them as integers (triton-lang/triton#11584)."""
    if not q.shape == k.shape == v.shape or q.dim() != 4:
        raise ValueError(f"q, k, v must share one (B, H, T, d) shape, got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    dtypes = {q.dtype, k.dtype, v.dtype}
    if len(dtypes) == 1:
        dtype = q.dtype
    elif torch.is_autocast_enabled(q.device.type):
        dtype = torch.get_autocast_dtype(q.device.type)
    else:
        dtype = torch.promote_types(torch.promote_types(q.dtype, k.dtype), v.dtype)
    if dtype not in DTYPES:
        raise ValueError(f"the triton kernels take float16, bfloat16 or float32 tensors, got {dtype}")
    compute = torch.float32 if dtype == torch.bfloat16 and INTERPRETED else dtype
    q, k, v = (t.to(compute).contiguous() for t in (q, k, v))
    return q, k, v, dtype


@dataclass(frozen=True)
class Launch:
    """Block sizes and compile options of one call. The interpreter (CPU) runs each
    program as numpy code, so small blocks keep tests fast; CUDA gets tensor-core sizes."""

    block_m: int
    block_n: int
    block_d: int
    precision: str
    num_warps: int
    num_stages: int

    @classmethod
    def for_inputs(cls, q: torch.Tensor) -> "Launch":
        d = q.size(-1)
        block_d = max(16, triton.next_power_of_2(d))  # tl.dot wants every dimension >= 16
        # float32 stays exact (torch's matmuls do not use TF32 by default either)
        precision = "ieee" if q.dtype == torch.float32 else "tf32"
        if not INTERPRETED:
            return cls(64, 64, block_d, precision, num_warps=4 if block_d <= 64 else 8, num_stages=2)
        # unequal on purpose, so that the tests cover the row/key block arithmetic both ways
        return cls(32, 16, block_d, precision, num_warps=1, num_stages=1)

    def meta(self) -> dict:
        """Keyword arguments of every kernel launch."""
        return dict(BLOCK_M=self.block_m, BLOCK_N=self.block_n, BLOCK_D=self.block_d, PRECISION=self.precision,
                    num_warps=self.num_warps, num_stages=self.num_stages)

    def row_grid(self, q: torch.Tensor) -> tuple[int, int]:
        """One program per block of query rows and head."""
        B, H, T, _ = q.shape
        return triton.cdiv(T, self.block_m), B * H

    def key_grid(self, q: torch.Tensor) -> tuple[int, int]:
        """One program per block of keys and head."""
        B, H, T, _ = q.shape
        return triton.cdiv(T, self.block_n), B * H


def softmax_scale(q: torch.Tensor) -> float:
    return 1.0 / math.sqrt(q.size(-1))


def row_stats(q: torch.Tensor, n: int) -> list[torch.Tensor]:
    """``n`` float32 (B * H, T) buffers for per-row statistics."""
    B, H, T, _ = q.shape
    return [torch.empty(B * H, T, device=q.device, dtype=torch.float32) for _ in range(n)]


@triton.jit
def load_tile(ptr, rows, dims, T, D):
    """The [rows, dims] tile of a (T, D) row-major matrix; zeros outside it."""
    mask = (rows[:, None] < T) & (dims[None, :] < D)
    return tl.load(ptr + rows[:, None] * D + dims[None, :], mask=mask, other=0.0)


@triton.jit
def store_tile(ptr, value, rows, dims, T, D):
    mask = (rows[:, None] < T) & (dims[None, :] < D)
    tl.store(ptr + rows[:, None] * D + dims[None, :], value.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def causal_scores(q, k, rows, cols, T, scale, PRECISION: tl.constexpr):
    """s = q k^T scale on one (rows, cols) tile, -inf where key ``cols[j]`` is not visible
    to query ``rows[i]`` (j > i, or either outside the sequence). Returns (s, visible)."""
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale
    visible = (cols[None, :] <= rows[:, None]) & (cols[None, :] < T) & (rows[:, None] < T)
    return tl.where(visible, s, float("-inf")), visible


@triton.jit
def causal_end(start_m, BLOCK_M: tl.constexpr, T):
    """One past the last key that queries start_m .. start_m + BLOCK_M - 1 can see."""
    return tl.minimum(start_m + BLOCK_M, T)
