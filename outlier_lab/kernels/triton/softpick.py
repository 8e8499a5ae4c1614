"""Fused causal softpick attention (Zuhri et al. 2025):
p_ij = relu(e^{s_ij} - 1) / (sum_{j<=i} |e^{s_ij} - 1| + eps), s = q.k / sqrt(d).

Forward, online over key blocks with the shift m = max(0, max_j s_ij) (the same identity as
outlier_lab/models/attention/softpick.py: numerator relu(u), u = e^{s-m} - e^{-m}, denominator
D = sum |u| + eps e^{-m}). When a block raises m, the running numerator P V and sum |u|
are both multiplied by e^{m_old - m_new} (u scales by exactly that), as in flash attention.
Per row it saves m and D: O(T) memory.

Backward, recomputing u from m: with dP_ij = dO_i.v_j and sum_j dP_ij P_ij = dO_i.O_i
(flash's "delta"), dL/ds_ij = e^{s_ij-m} (dP_ij [u_ij > 0] - sign(u_ij) delta_i) / D_i,
the formula of SoftpickProbs.backward; then dQ = dS K / sqrt(d), dK = dS^T Q / sqrt(d),
dV = P^T dO.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from outlier_lab.kernels.triton._common import (
    Launch, causal_end, causal_scores, load_tile, prepare, row_stats, softmax_scale, store_tile,
)


@triton.jit
def _fwd(Q, K, V, O, M, DEN, T, D, scale, eps,
         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr):
    start_m = tl.program_id(0) * BLOCK_M
    head = tl.program_id(1).to(tl.int64) * T * D
    rows = start_m + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    q = load_tile(Q + head, rows, dims, T, D)
    m = tl.zeros([BLOCK_M], dtype=tl.float32)  # the shift starts at 0: m = max(0, max_j s_ij)
    abs_sum = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for start_n in range(0, causal_end(start_m, BLOCK_M, T), BLOCK_N):
        cols = start_n + tl.arange(0, BLOCK_N)
        k = load_tile(K + head, cols, dims, T, D)
        v = load_tile(V + head, cols, dims, T, D)
        s, visible = causal_scores(q, k, rows, cols, T, scale, PRECISION)
        m_new = tl.maximum(m, tl.max(s, axis=1))
        rescale = tl.exp(m - m_new)
        # masked keys must add nothing: their u would be -e^{-m}, not 0
        u = tl.where(visible, tl.exp(s - m_new[:, None]) - tl.exp(-m_new)[:, None], 0.0)
        abs_sum = abs_sum * rescale + tl.sum(tl.abs(u), axis=1)
        acc = acc * rescale[:, None] + tl.dot(tl.maximum(u, 0.0).to(v.dtype), v, input_precision=PRECISION)
        m = m_new
    den = abs_sum + eps * tl.exp(-m)
    store_tile(O + head, acc / den[:, None], rows, dims, T, D)
    stat = tl.program_id(1).to(tl.int64) * T + rows
    tl.store(M + stat, m, mask=rows < T)
    tl.store(DEN + stat, den, mask=rows < T)


@triton.jit
def _probs_and_grad(q, k, v, do, m, den, delta, rows, cols, T, scale, PRECISION: tl.constexpr):
    """P and dL/ds on one tile, from the saved row shift m, denominator and delta."""
    s, visible = causal_scores(q, k, rows, cols, T, scale, PRECISION)
    e = tl.exp(s - m[:, None])  # 0 on masked keys
    u = tl.where(visible, e - tl.exp(-m)[:, None], 0.0)
    p = tl.maximum(u, 0.0) / den[:, None]
    dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
    # dP [u > 0] - sign(u) delta: u > 0 -> dP - delta, u < 0 -> +delta, u == 0 -> 0
    g = tl.where(u > 0, dp - delta[:, None], tl.where(u < 0, delta[:, None], 0.0))
    return p, g * e / den[:, None]


@triton.jit
def _load_row_stats(M, DEN, DELTA, bh, rows, T):
    stat = bh.to(tl.int64) * T + rows
    inside = rows < T
    m = tl.load(M + stat, mask=inside, other=0.0)
    den = tl.load(DEN + stat, mask=inside, other=1.0)  # 1, not 0: rows past T must not divide by 0
    delta = tl.load(DELTA + stat, mask=inside, other=0.0)
    return m, den, delta


@triton.jit
def _bwd_dkdv(Q, K, V, DO, M, DEN, DELTA, DK, DV, T, D, scale,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr):
    """One block of keys; loops over the query blocks that can see it."""
    start_n = tl.program_id(0) * BLOCK_N
    head = tl.program_id(1).to(tl.int64) * T * D
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
        m, den, delta = _load_row_stats(M, DEN, DELTA, tl.program_id(1), rows, T)
        p, ds = _probs_and_grad(q, k, v, do, m, den, delta, rows, cols, T, scale, PRECISION)
        dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PRECISION)
        dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PRECISION)
    store_tile(DK + head, dk * scale, cols, dims, T, D)
    store_tile(DV + head, dv, cols, dims, T, D)


@triton.jit
def _bwd_dq(Q, K, V, DO, M, DEN, DELTA, DQ, T, D, scale,
            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr):
    """One block of queries; loops over the keys it can see."""
    start_m = tl.program_id(0) * BLOCK_M
    head = tl.program_id(1).to(tl.int64) * T * D
    rows = start_m + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    q = load_tile(Q + head, rows, dims, T, D)
    do = load_tile(DO + head, rows, dims, T, D)
    m, den, delta = _load_row_stats(M, DEN, DELTA, tl.program_id(1), rows, T)
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for start_n in range(0, causal_end(start_m, BLOCK_M, T), BLOCK_N):
        cols = start_n + tl.arange(0, BLOCK_N)
        k = load_tile(K + head, cols, dims, T, D)
        v = load_tile(V + head, cols, dims, T, D)
        _, ds = _probs_and_grad(q, k, v, do, m, den, delta, rows, cols, T, scale, PRECISION)
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
    store_tile(DQ + head, dq * scale, rows, dims, T, D)


class SoftpickAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, eps):
        q, k, v, out_dtype = prepare(q, k, v)
        launch = Launch.for_inputs(q)
        T, D = q.shape[-2:]
        o = torch.empty_like(q)
        m, den = row_stats(q, 2)
        _fwd[launch.row_grid(q)](q, k, v, o, m, den, T, D, softmax_scale(q), eps, **launch.meta())
        ctx.save_for_backward(q, k, v, o, m, den)
        return o.to(out_dtype)

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, m, den = ctx.saved_tensors
        do = do.to(q.dtype).contiguous()
        launch = Launch.for_inputs(q)
        T, D = q.shape[-2:]
        delta = (do.float() * o.float()).sum(-1)  # (B, H, T) = sum_j dP_ij P_ij
        args = (m, den, delta)
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        _bwd_dkdv[launch.key_grid(q)](q, k, v, do, *args, dk, dv, T, D, softmax_scale(q), **launch.meta())
        _bwd_dq[launch.row_grid(q)](q, k, v, do, *args, dq, T, D, softmax_scale(q), **launch.meta())
        return dq, dk, dv, None


def softpick_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Causal softpick attention on (B, H, T, d) tensors."""
    return SoftpickAttention.apply(q, k, v, float(eps))
