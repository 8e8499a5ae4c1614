"""Attention statistics of one layer's probe weights p (B, H, T, T) on the real keys (a row
may sum to less than 1): pure functions.

Sources:
- Gu et al. 2025, "When Attention Sink Emerges in Language Models" (sail-sg/Attention-Sink,
  its evaluation code): per sequence, layer and head, alpha = (1/T) sum_{i>=0} p_i0 over
  the first T tokens (T = 64 in their setting); a sink when alpha > 0.3; the sink rate is
  the fraction of sinks over sequences, layers and heads.
- An et al. 2025, the seed paper (an-yongqi/systematic-outliers, pos_attention_outliers.py):
  attention-outlier keys, one sequence at a time: acc_j = sum_i mean_h p_ij >= 0.1 T.
- Guo et al. 2024, "Active-Dormant Attention Heads": the first-token share (attention sink),
  with value-state drain and residual-state peak in ``activations.norm_ratio_to_others``.

``queries`` (B, T) bool, where a function takes it, restricts the statistic to the query rows
of one domain (Guo et al. split queries by whether the head has work to do on them); None
means every row.
"""

from __future__ import annotations

import torch

from outlier_lab.metrics.activations import f32


def masked_sums(x: torch.Tensor, queries: torch.Tensor | None, dim) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum, count) of x (B, H, T) over dim, counting only the rows i with queries[b, i] (all:
    None): a mean's two parts, which add up over windows."""
    w = torch.ones_like(x) if queries is None else queries.to(x.device, x.dtype)[:, None, :].expand_as(x)
    return (x * w).sum(dim=dim), w.sum(dim=dim)


def rows_mean(x: torch.Tensor, queries: torch.Tensor | None, dim) -> torch.Tensor:
    """Mean of x (B, H, T) over dim, counting only the rows i with queries[b, i] (all: None);
    NaN where no row counts."""
    total, count = masked_sums(x, queries, dim)
    return total / count


def first_token_sums(p: torch.Tensor, queries: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``first_token_share``'s (sum, count), each (H,), over sequences and queries i >= 1."""
    return masked_sums(f32(p)[:, :, 1:, 0], None if queries is None else queries[:, 1:], dim=(0, 2))


def first_token_share(p: torch.Tensor, queries: torch.Tensor | None = None) -> torch.Tensor:
    """(H,): per head, the mean over sequences and queries i >= 1 (of the domain) of p_i0."""
    total, count = first_token_sums(p, queries)
    return total / count


def sink_scores(p: torch.Tensor, tokens: int | None = 64, queries: torch.Tensor | None = None) -> torch.Tensor:
    """(B, H): Gu et al.'s alpha = (1/T') sum_{i < T'} p_i0 per sequence and head, query 0
    included, over the first T' = min(tokens, T) queries (None: all of them); with a domain,
    over its queries among those (NaN for a sequence that has none there)."""
    t = p.shape[-2] if tokens is None else min(tokens, p.shape[-2])
    return rows_mean(f32(p)[:, :, :t, 0], None if queries is None else queries[:, :t], dim=-1)


def sink_rate(scores: torch.Tensor, eps: float = 0.3) -> float:
    """Fraction of the (sequence, layer, head) scores of ``sink_scores`` that exceed eps;
    NaN scores (a sequence without queries of the domain) are left out."""
    scores = f32(torch.as_tensor(scores))
    scores = scores[~torch.isnan(scores)]
    return (scores > eps).float().mean().item() if scores.numel() else float("nan")


def outlier_keys(p: torch.Tensor, ratio: float = 0.1) -> torch.Tensor:
    """(B, T) bool: key j of sequence b is an attention outlier when sum_i mean_h p_bhij >= ratio T."""
    acc = f32(p).mean(dim=1).sum(dim=1)  # (B, T)
    return acc >= ratio * p.shape[-1]


def entropy_sums(p: torch.Tensor, queries: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``attention_entropy``'s (sum, count), each (H,), over sequences and rows."""
    x = f32(p)
    return masked_sums(-torch.xlogy(x, x).sum(dim=-1), queries, dim=(0, 2))


def attention_entropy(p: torch.Tensor, queries: torch.Tensor | None = None) -> torch.Tensor:
    """(H,): per head, the mean over sequences and rows of -sum_j p_ij log p_ij, 0 log 0 = 0.
    Rows summing to less than 1 are used as they are (not renormalised); p >= 0 assumed."""
    total, count = entropy_sums(p, queries)
    return total / count


def null_mass_sums(null: torch.Tensor, queries: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``null_mass``'s (sum, count), each (H,), over sequences and rows."""
    return masked_sums(f32(null), queries, dim=(0, 2))


def null_mass(null: torch.Tensor, queries: torch.Tensor | None = None) -> torch.Tensor:
    """(H,): per head, the mean over sequences and rows of a probe's null_mass (B, H, T)."""
    total, count = null_mass_sums(null, queries)
    return total / count


def value_stats(t: torch.Tensor) -> dict[str, float]:
    """mean, min and max over all entries (scale, gate, slot-weight or lambda values)."""
    x = f32(t)
    return {"mean": x.mean().item(), "min": x.min().item(), "max": x.max().item()}
