"""Fused causal sigmoid attention: o_i = sum_{j<=i} sigmoid(s_ij + b) v_j, s = q.k / sqrt(d).

Every weight depends on its own logit only, so the forward is one pass over the key
blocks with no row statistics, and the backward recomputes P tile by tile:
dV = P^T dO, dP = dO V^T, dS = dP p (1 - p), dQ = dS K / sqrt(d), dK = dS^T Q / sqrt(d).
Reference: outlier_lab/models/attention/sigmoid.py through kernels.naive.elementwise_attention.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from outlier_lab.kernels.triton._common import Launch, causal_end, causal_scores, load_tile, prepare, softmax_scale, store_tile


@triton.jit
def _probs(q, k, rows, cols, T, scale, bias, PRECISION: tl.constexpr):
    s, visible = causal_scores(q, k, rows, cols, T, scale, PRECISION)
    return tl.where(visible, tl.sigmoid(s + bias), 0.0)


@triton.jit
def _fwd(Q, K, V, O, T, D, scale, bias,
         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr):
    start_m = tl.program_id(0) * BLOCK_M
    head = tl.program_id(1).to(tl.int64) * T * D
    rows = start_m + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    q = load_tile(Q + head, rows, dims, T, D)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for start_n in range(0, causal_end(start_m, BLOCK_M, T), BLOCK_N):
        cols = start_n + tl.arange(0, BLOCK_N)
        k = load_tile(K + head, cols, dims, T, D)
        v = load_tile(V + head, cols, dims, T, D)
        p = _probs(q, k, rows, cols, T, scale, bias, PRECISION)
        acc += tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    store_tile(O + head, acc, rows, dims, T, D)


@triton.jit
def _bwd_dkdv(Q, K, V, DO, DK, DV, T, D, scale, bias,
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
        p = _probs(q, k, rows, cols, T, scale, bias, PRECISION)
        dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PRECISION)
        ds = tl.dot(do, tl.trans(v), input_precision=PRECISION) * p * (1.0 - p)
        dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PRECISION)
    store_tile(DK + head, dk * scale, cols, dims, T, D)
    store_tile(DV + head, dv, cols, dims, T, D)


@triton.jit
def _bwd_dq(Q, K, V, DO, DQ, T, D, scale, bias,
            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr):
    """One block of queries; loops over the keys it can see."""
    start_m = tl.program_id(0) * BLOCK_M
    head = tl.program_id(1).to(tl.int64) * T * D
    rows = start_m + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    q = load_tile(Q + head, rows, dims, T, D)
    do = load_tile(DO + head, rows, dims, T, D)
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for start_n in range(0, causal_end(start_m, BLOCK_M, T), BLOCK_N):
        cols = start_n + tl.arange(0, BLOCK_N)
        k = load_tile(K + head, cols, dims, T, D)
        v = load_tile(V + head, cols, dims, T, D)
        p = _probs(q, k, rows, cols, T, scale, bias, PRECISION)
        ds = tl.dot(do, tl.trans(v), input_precision=PRECISION) * p * (1.0 - p)
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
    store_tile(DQ + head, dq * scale, rows, dims, T, D)


class SigmoidAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, bias):
        q, k, v, out_dtype = prepare(q, k, v)
        launch = Launch.for_inputs(q)
        T, D = q.shape[-2:]
        o = torch.empty_like(q)
        _fwd[launch.row_grid(q)](q, k, v, o, T, D, softmax_scale(q), bias, **launch.meta())
        ctx.save_for_backward(q, k, v)
        ctx.bias = bias
        return o.to(out_dtype)

    @staticmethod
    def backward(ctx, do):
        q, k, v = ctx.saved_tensors
        do = do.to(q.dtype).contiguous()
        launch = Launch.for_inputs(q)
        T, D = q.shape[-2:]
        args = (T, D, softmax_scale(q), ctx.bias)
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        _bwd_dkdv[launch.key_grid(q)](q, k, v, do, dk, dv, *args, **launch.meta())
        _bwd_dq[launch.row_grid(q)](q, k, v, do, dq, *args, **launch.meta())
        return dq, dk, dv, None


def sigmoid_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: float = 0.0) -> torch.Tensor:
    """Causal sum_j sigmoid(q_i.k_j / sqrt(d) + bias) v_j on (B, H, T, d) tensors."""
    return SigmoidAttention.apply(q, k, v, float(bias))
