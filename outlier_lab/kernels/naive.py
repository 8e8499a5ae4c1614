"""Plain-PyTorch causal softmax attention: the reference every fast path is tested
against, and the path the metric probes use because it returns the probabilities.

Each function takes an optional ``transform`` applied to the attention weights before they
multiply V (and returned transformed): the W8A8 compression protocol quantizes them there
(outlier_lab/compression/). None, the default, changes nothing."""

from __future__ import annotations

import functools
import math

import torch


@functools.lru_cache(maxsize=16)
def causal_mask(t_q: int, t_k: int, device: torch.device) -> torch.Tensor:
    """Boolean (t_q, t_k) mask, True where query i may see key j (bottom-right aligned)."""
    offset = t_k - t_q
    return torch.ones(t_q, t_k, dtype=torch.bool, device=device).tril(diagonal=offset)


def causal_logits(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """s_ij = q_i . k_j / sqrt(d), with -inf above the causal diagonal. Shapes (B, H, T, d)."""
    s = (q * (1 / math.sqrt(q.size(-1)))) @ k.transpose(-2, -1)  # scaling q is T/d times cheaper than s
    return s.masked_fill_(~causal_mask(q.size(-2), k.size(-2), q.device), float("-inf"))


def softmax_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0, transform=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (o, p): o = softmax(s) V of shape (B, H, T, d), and p of shape (B, H, T, T)."""
    s = causal_logits(q, k)
    p = torch.softmax(s, dim=-1, dtype=torch.promote_types(s.dtype, torch.float32)).to(q.dtype)
    if transform is not None:
        p = transform(p)
    p_used = torch.nn.functional.dropout(p, dropout_p) if dropout_p > 0 else p
    return p_used @ v, p


def slot_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    slot_logit: torch.Tensor,
    slot_value: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    transform=None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Softmax over the causal keys plus one extra slot with logit ``slot_logit`` (B, H, T, 1)
    and value ``slot_value`` (broadcast to (B, H, T, d); None = zeros).

    Returns (o, pi, p): p (B, H, T, T) are the weights of the real keys (rows sum to 1 - pi),
    pi (B, H, T) the weight of the slot, o = p V + pi v'. ``transform`` gets the weights of
    the keys and the slot together, (B, H, T, T + 1), the slot last: one softmax, one tensor."""
    s = causal_logits(q, k)
    z = torch.cat([s, slot_logit.expand(*s.shape[:-1], 1).to(s.dtype)], dim=-1)
    weights = torch.softmax(z, dim=-1, dtype=torch.promote_types(z.dtype, torch.float32)).to(q.dtype)
    if transform is not None:
        weights = transform(weights)
    p, pi = weights[..., :-1], weights[..., -1]
    p_used = torch.nn.functional.dropout(p, dropout_p) if dropout_p > 0 else p
    o = p_used @ v
    if slot_value is not None:
        o = o + pi.unsqueeze(-1) * slot_value
    return o, pi, p


def elementwise_attention(q, k, v, probs_fn, dropout_p: float = 0.0, transform=None) -> tuple[torch.Tensor, torch.Tensor]:
    """o = P V with P = probs_fn(s, mask) computed from the full (B, H, T, T) logits;
    ``mask`` is True where key j is visible to query i. Returns (o, P)."""
    s = causal_logits(q, k)
    p = probs_fn(s, causal_mask(q.size(-2), k.size(-2), q.device))
    if transform is not None:
        p = transform(p)
    p_used = torch.nn.functional.dropout(p, dropout_p) if dropout_p > 0 else p
    return p_used @ v, p
