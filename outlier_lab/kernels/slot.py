"""Fast exact paths for softmax with one extra "slot" key (softmax1, sink, attn_bias,
ca_bias): the slot becomes a real key of an augmented attention, so no log-sum-exp is
needed. One extra channel carries the slot logit's bias (q gets a 1, the slot key gets
bias * sqrt(d), the softmax scale stays 1/sqrt(d)), and one extra value channel is an
indicator whose output is the slot weight pi. Plain SDPA runs it with a boolean mask
(CPU and CUDA); FlexAttention runs it with a block mask on CUDA."""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F


def augment(q, k, v, slot_key=None, slot_bias=None, slot_value=None):
    """(q, k, v) -> (q', k', v') of one more channel and, for k' and v', one more key (the slot)."""
    B, H, T, d = q.shape
    ones, zeros = q.new_ones(B, H, T, 1), q.new_zeros(B, H, T, 1)
    key = slot_key if slot_key is not None else q.new_zeros(1, H, 1, d)
    bias = slot_bias if slot_bias is not None else q.new_zeros(1, H, 1, 1)
    value = slot_value if slot_value is not None else q.new_zeros(1, H, 1, v.size(-1))
    q_aug = torch.cat([q, ones], dim=-1)
    k_slot = torch.cat([key.to(q.dtype), bias.to(q.dtype) * math.sqrt(d)], dim=-1).expand(B, H, 1, d + 1)
    k_aug = torch.cat([torch.cat([k, zeros], dim=-1), k_slot], dim=-2)
    v_slot = torch.cat([value.to(v.dtype), v.new_ones(1, H, 1, 1)], dim=-1).expand(B, H, 1, v.size(-1) + 1)
    v_aug = torch.cat([torch.cat([v, v.new_zeros(B, H, T, 1)], dim=-1), v_slot], dim=-2)
    return q_aug, k_aug, v_aug


@functools.lru_cache(maxsize=16)
def _slot_mask(t: int, device: torch.device) -> torch.Tensor:
    """(T, T + 1): causal over the real keys, the slot (last column) always visible."""
    mask = torch.ones(t, t + 1, dtype=torch.bool, device=device).tril()
    mask[:, -1] = True
    return mask


def sdpa_slot_attention(q, k, v, slot_key=None, slot_bias=None, slot_value=None, dropout_p=0.0):
    """Returns (o, pi) with o = p V + pi v' (see kernels.naive.slot_attention)."""
    d = q.size(-1)
    q_aug, k_aug, v_aug = augment(q, k, v, slot_key, slot_bias, slot_value)
    out = F.scaled_dot_product_attention(
        q_aug, k_aug, v_aug, attn_mask=_slot_mask(q.size(-2), q.device), dropout_p=dropout_p, scale=1 / math.sqrt(d)
    )
    return out[..., :-1], out[..., -1]


def flex_slot_attention(q, k, v, slot_key=None, slot_bias=None, slot_value=None, compiled=True):
    """The same through FlexAttention (CUDA; ``compiled=False`` runs its eager reference mode)."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    T, d, dv = q.size(-2), q.size(-1), v.size(-1)
    q_aug, k_aug, v_aug = (_pad16(t) for t in augment(q, k, v, slot_key, slot_bias, slot_value))

    def visible(b, h, q_idx, kv_idx):
        return (kv_idx <= q_idx) | (kv_idx == T)

    block_mask = create_block_mask(visible, None, None, T, T + 1, device=q.device)
    attend = _compiled_flex() if compiled else flex_attention
    out = attend(q_aug, k_aug, v_aug, block_mask=block_mask, scale=1 / math.sqrt(d))
    return out[..., :dv], out[..., dv]


def _pad16(t: torch.Tensor) -> torch.Tensor:
    """Zero channels up to a multiple of 16 (Flex's kernels want such head sizes); they add
    nothing to q.k and their value outputs are dropped."""
    return F.pad(t, (0, -t.size(-1) % 16))


@functools.cache
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)
