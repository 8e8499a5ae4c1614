"""Fused causal clipped softmax attention (Bondarenko et al. 2023):
p = clip((zeta - gamma) softmax(s) + gamma, 0, 1), s = q.k / sqrt(d), zeta >= 1, gamma <= 0.

The clip needs each softmax weight exactly, so the forward makes two passes over the key
blocks: the first finds each row's log-sum-exp (online), the second forms the clipped
weights and accumulates P V. Per row it saves the lse: O(T) memory.

Backward (ClippedSoftmaxProbs.backward): with y = (zeta - gamma) softmax + gamma,
g_ij = (zeta - gamma) dP_ij [0 < y_ij < 1] and dL/ds_ij = softmax_ij (g_ij - R_i),
R_i = sum_j g_ij softmax_ij. Because of the clip, R_i is not dO_i.O_i (flash's delta), so
the dQ kernel first makes its own pass over the key blocks for R (and stores it for the
dK/dV kernel, which runs after it), then a second pass for dQ.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from outlier_lab.kernels.triton._common import (
    Launch, causal_end, causal_scores, load_tile, prepare, row_stats, softmax_scale, store_tile,
)


@triton.jit
def _softmax_and_clipped(q, k, lse, rows, cols, T, scale, zeta, gamma, PRECISION: tl.constexpr):
    """softmax(s), y = (zeta - gamma) softmax + gamma, and the clipped weights, on one tile."""
    s, visible = causal_scores(q, k, rows, cols, T, scale, PRECISION)
    soft = tl.where(visible, tl.exp(s - lse[:, None]), 0.0)
    y = (zeta - gamma) * soft + gamma
    clipped = tl.where(visible, tl.minimum(tl.maximum(y, 0.0), 1.0), 0.0)
    return soft, y, clipped


@triton.jit
def _fwd(Q, K, V, O, LSE, T, D, scale, zeta, gamma,
         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr):
    start_m = tl.program_id(0) * BLOCK_M
    head = tl.program_id(1).to(tl.int64) * T * D
    rows = start_m + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    q = load_tile(Q + head, rows, dims, T, D)
    end = causal_end(start_m, BLOCK_M, T)
    # pass 1: online log-sum-exp (a finite start: rows past T see no key, and -inf - -inf is nan)
    m = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
    total = tl.zeros([BLOCK_M], dtype=tl.float32)
    for start_n in range(0, end, BLOCK_N):
        cols = start_n + tl.arange(0, BLOCK_N)
        k = load_tile(K + head, cols, dims, T, D)
        s, _ = causal_scores(q, k, rows, cols, T, scale, PRECISION)
        m_new = tl.maximum(m, tl.max(s, axis=1))
        total = total * tl.exp(m - m_new) + tl.sum(tl.exp(s - m_new[:, None]), axis=1)
        m = m_new
    # total >= 1 on every real row (its max adds e^0); the floor keeps rows past T finite
    lse = m + tl.log(tl.maximum(total, 1.0))
    # pass 2: the clipped weights times V
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for start_n in range(0, end, BLOCK_N):
        cols = start_n + tl.arange(0, BLOCK_N)
        k = load_tile(K + head, cols, dims, T, D)
        v = load_tile(V + head, cols, dims, T, D)
        _, _, p = _softmax_and_clipped(q, k, lse, rows, cols, T, scale, zeta, gamma, PRECISION)
        acc += tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    store_tile(O + head, acc, rows, dims, T, D)
    tl.store(LSE + tl.program_id(1).to(tl.int64) * T + rows, lse, mask=rows < T)


@triton.jit
def _grad_terms(q, k, v, do, lse, rows, cols, T, scale, zeta, gamma, PRECISION: tl.constexpr):
    """softmax, clipped weights and g = (zeta - gamma) dP [0 < y < 1] on one tile."""
    soft, y, clipped = _softmax_and_clipped(q, k, lse, rows, cols, T, scale, zeta, gamma, PRECISION)
    dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
    g = tl.where((y > 0) & (y < 1), dp * (zeta - gamma), 0.0)  # soft == 0 where masked, so ds is 0 there
    return soft, clipped, g


@triton.jit
def _bwd_dq(Q, K, V, DO, LSE, R, DQ, T, D, scale, zeta, gamma,
            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr):
    """One block of queries: pass 1 computes and stores R, pass 2 accumulates dQ."""
    start_m = tl.program_id(0) * BLOCK_M
    head = tl.program_id(1).to(tl.int64) * T * D
    stat = tl.program_id(1).to(tl.int64) * T
    rows = start_m + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    q = load_tile(Q + head, rows, dims, T, D)
    do = load_tile(DO + head, rows, dims, T, D)
    lse = tl.load(LSE + stat + rows, mask=rows < T, other=0.0)
    end = causal_end(start_m, BLOCK_M, T)
    r = tl.zeros([BLOCK_M], dtype=tl.float32)
    for start_n in range(0, end, BLOCK_N):
        cols = start_n + tl.arange(0, BLOCK_N)
        k = load_tile(K + head, cols, dims, T, D)
        v = load_tile(V + head, cols, dims, T, D)
        soft, _, g = _grad_terms(q, k, v, do, lse, rows, cols, T, scale, zeta, gamma, PRECISION)
        r += tl.sum(g * soft, axis=1)
    tl.store(R + stat + rows, r, mask=rows < T)
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for start_n in range(0, end, BLOCK_N):
        cols = start_n + tl.arange(0, BLOCK_N)
        k = load_tile(K + head, cols, dims, T, D)
        v = load_tile(V + head, cols, dims, T, D)
        soft, _, g = _grad_terms(q, k, v, do, lse, rows, cols, T, scale, zeta, gamma, PRECISION)
        ds = soft * (g - r[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
    store_tile(DQ + head, dq * scale, rows, dims, T, D)


@triton.jit
def _bwd_dkdv(Q, K, V, DO, LSE, R, DK, DV, T, D, scale, zeta, gamma,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr):
    """One block of keys; loops over the query blocks that can see it (needs R from _bwd_dq)."""
    start_n = tl.program_id(0) * BLOCK_N
    head = tl.program_id(1).to(tl.int64) * T * D
    stat = tl.program_id(1).to(tl.int64) * T
    cols = start_n + tl.arange(0, BLOCK_N)
    dims = tl.arange(0, BLOCK_D)
    k = load_tile(K + head, cols, dims, T, D)
    v = load_tile(V + head, cols, dims, T, D)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    for start_m in range(start_n // BLOCK_M * BLOCK_M, T, BLOCK_M):
        rows = start_m + tl.arange(0, BLOCK_M)
        q = load_tile(Q + head, rows, dims, T, D)
        do = load_tile(DO + head, rows, dims, T, D)
        lse = tl.load(LSE + stat + rows, mask=rows < T, other=0.0)
        r = tl.load(R + stat + rows, mask=rows < T, other=0.0)
        soft, clipped, g = _grad_terms(q, k, v, do, lse, rows, cols, T, scale, zeta, gamma, PRECISION)
        dv += tl.dot(tl.trans(clipped.to(do.dtype)), do, input_precision=PRECISION)
        ds = soft * (g - r[:, None])
        dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PRECISION)
    store_tile(DK + head, dk * scale, cols, dims, T, D)
    store_tile(DV + head, dv, cols, dims, T, D)


class ClippedSoftmaxAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, zeta, gamma):
        q, k, v, out_dtype = prepare(q, k, v)
        launch = Launch.for_inputs(q)
        T, D = q.shape[-2:]
        o = torch.empty_like(q)
        (lse,) = row_stats(q, 1)
        _fwd[launch.row_grid(q)](q, k, v, o, lse, T, D, softmax_scale(q), zeta, gamma, **launch.meta())
        ctx.save_for_backward(q, k, v, lse)
        ctx.zeta, ctx.gamma = zeta, gamma
        return o.to(out_dtype)

    @staticmethod
    def backward(ctx, do):
        q, k, v, lse = ctx.saved_tensors
        do = do.to(q.dtype).contiguous()
        launch = Launch.for_inputs(q)
        T, D = q.shape[-2:]
        (r,) = row_stats(q, 1)
        args = (T, D, softmax_scale(q), ctx.zeta, ctx.gamma)
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        _bwd_dq[launch.row_grid(q)](q, k, v, do, lse, r, dq, *args, **launch.meta())  # writes R first
        _bwd_dkdv[launch.key_grid(q)](q, k, v, do, lse, r, dk, dv, *args, **launch.meta())
        return dq, dk, dv, None, None


def clipped_softmax_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, zeta: float = 1.0,
                              gamma: float = 0.0) -> torch.Tensor:
    """Causal clipped softmax attention on (B, H, T, d) tensors (zeta >= 1, gamma <= 0)."""
    if zeta < 1 or gamma > 0:
        raise ValueError(f"clipped softmax needs zeta >= 1 and gamma <= 0, got zeta={zeta}, gamma={gamma}")
    return ClippedSoftmaxAttention.apply(q, k, v, float(zeta), float(gamma))
