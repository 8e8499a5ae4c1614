"""Plain-torch pieces that the variants' ``reference`` formulas are written with (the idea
of flash-linear-attention's ``naive.py``): explicit loops over heads, explicit masks,
nothing from ``kernels`` or the modules' own helpers, so that a bug in a fast path or in
the base class cannot hide in its own reference. Shapes: x (B, T, C); q, k, v (B, H, T, d)."""

from __future__ import annotations

import math

import torch


def linear(lin, x):
    """x W^T + b of an nn.Linear, by hand."""
    return x @ lin.weight.T + (0 if lin.bias is None else lin.bias)


def split_heads(t, d):
    """(B, T, H*d) -> (B, H, T, d): head h is channels h*d:(h+1)*d."""
    return torch.stack([t[..., h * d : (h + 1) * d] for h in range(t.size(-1) // d)], dim=1)


def merge_heads(o):
    """(B, H, T, w) -> (B, T, H*w): head h -> channels h*w:(h+1)*w."""
    return torch.cat([o[:, h] for h in range(o.size(1))], dim=-1)


def rotate(t, rope):
    """Rotary embedding in the rotate-half form, from its definition."""
    cos, sin = rope
    half = t.size(-1) // 2
    t1, t2 = t[..., :half], t[..., half:]
    return t * cos + torch.cat([-t2, t1], dim=-1) * sin


def rms_norm(t, gain, eps):
    """t / sqrt(mean(t^2) + eps) * gain over the last dimension, by hand."""
    return t / torch.sqrt(t.pow(2).mean(-1, keepdim=True) + eps) * gain


def qkv(module, x, rope):
    """q, k, v of the module's c_attn; q and k RMS-normalised per head with the module's
    q_norm / k_norm gains when it has them (model.qk_norm), then rotated when rope is given."""
    c, d = module.n_embd, module.head_dim
    out = linear(module.c_attn, x)
    q, k, v = (split_heads(out[..., i * c : (i + 1) * c], d) for i in range(3))
    if getattr(module, "q_norm", None) is not None:
        q = rms_norm(q, module.q_norm.weight, module.q_norm.eps)
        k = rms_norm(k, module.k_norm.weight, module.k_norm.eps)
    if rope is not None:
        q, k = rotate(q, rope), rotate(k, rope)
    return q, k, v


def logits(q, k):
    """s_ij = q_i . k_j / sqrt(d), every (i, j): the causal mask is applied by the caller."""
    return q @ k.transpose(-1, -2) / math.sqrt(q.size(-1))


def visible(t, dtype=torch.float64):
    """(t, t) mask: 1 where key j <= query i, else 0."""
    return torch.ones(t, t, dtype=dtype).tril()


def causal_softmax(s):
    return torch.softmax(s.masked_fill(visible(s.size(-1)) == 0, float("-inf")), dim=-1)


def causal_exp(s):
    """e^{s_ij} where visible, 0 elsewhere (no max shift: the tests keep the logits moderate)."""
    return torch.exp(s) * visible(s.size(-1), s.dtype)


def head_scale(o, g):
    """o (B, H, T, w) times a factor per (token, head), g (B, T, H)."""
    return o * g.transpose(1, 2).unsqueeze(-1)


def finish(module, o, extra=None):
    """Merge the heads, add ``extra`` (a bias after the merge), apply the output projection."""
    y = merge_heads(o)
    if extra is not None:
        y = y + extra
    return linear(module.c_proj, y)
