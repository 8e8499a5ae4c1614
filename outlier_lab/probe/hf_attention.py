"""The attention function the probes run a Hugging Face model with: eager attention (the
same operations as transformers' own ``eager`` implementation) that records what the
outlier metrics read, and can remove a head's attention to the first token.

transformers looks an attention implementation up by name in ``AttentionInterface`` (and
the mask it needs in ``AttentionMaskInterface``); ``use_probe_attention`` registers this one
under ``PROBE_ATTENTION`` and switches a model to it. What a call records or edits is held by
a ``HeadTap`` on the attention module itself (``module.outlier_tap``), so two models in one
process never share state, and a module without a tap runs plain eager attention."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from outlier_lab.errors import ConfigError

PROBE_ATTENTION = "outlier_probe"


@dataclass
class HeadTap:
    """What one attention layer's calls record (``record``) and edit (``drop_first``)."""
    record: bool = False
    # heads whose weight on the first key is removed and the rest renormalised to the row's sum
    drop_first: list[int] = field(default_factory=list)
    # per call (one per probed sequence): probs (B, H, T, T), max_logit (B, H), values (B, H_kv, T, d)
    calls: list[dict[str, torch.Tensor]] = field(default_factory=list)


def drop_first_key(p: torch.Tensor, heads: list[int]) -> torch.Tensor:
    """p (B, H, T, T) with the first key's weight of the given heads set to zero and each of
    their rows rescaled to its old sum (the first query, which sees only key 0, keeps its row:
    it has nothing else to attend to)."""
    if not heads:
        return p
    p = p.clone()
    rows = p[:, heads]
    total = rows.sum(-1, keepdim=True)
    rest = rows[..., 1:].sum(-1, keepdim=True)
    edited = rows.clone()
    edited[..., 0] = 0
    edited = torch.where(rest > 0, edited * (total / rest.clamp_min(torch.finfo(rows.dtype).tiny)), rows)
    p[:, heads] = edited
    return p


def probe_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers' eager attention (grouped keys and values repeated, float32 softmax,
    weights cast back) with the module's HeadTap applied; the signature is the interface's."""
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    groups = query.size(1) // key.size(1)
    k = key.repeat_interleave(groups, dim=1) if groups > 1 else key
    v = value.repeat_interleave(groups, dim=1) if groups > 1 else value
    logits = torch.matmul(query, k.transpose(2, 3)) * scaling
    if attention_mask is not None:
        logits = logits + attention_mask[..., : k.size(-2)]
    p = torch.softmax(logits, dim=-1, dtype=torch.float32).to(query.dtype)
    tap = getattr(module, "outlier_tap", None)
    if tap is not None:
        p = drop_first_key(p, tap.drop_first)
        if tap.record:  # the masked logits' max is the largest visible one: a query always sees itself
            tap.calls.append({"probs": p.detach(), "max_logit": logits.detach().amax(dim=(-2, -1)),
                              "values": value.detach()})
    p = torch.nn.functional.dropout(p, p=dropout, training=module.training)
    return torch.matmul(p, v).transpose(1, 2).contiguous(), p


def use_probe_attention(model) -> None:
    """Register ``probe_attention_forward`` with transformers and switch ``model`` to it; a
    model that refuses it is a ConfigError (one whose code ignores it, and so never calls it,
    is caught by ``probe.probe_hf``)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(PROBE_ATTENTION, probe_attention_forward)
    AttentionMaskInterface.register(PROBE_ATTENTION, eager_mask)
    try:
        model.set_attn_implementation(PROBE_ATTENTION)
    except (ValueError, AttributeError, NotImplementedError) as e:
        raise ConfigError(f"{type(model).__name__} cannot run with a custom eager attention (transformers' "
                          f"attention interface), so its attention weights cannot be read: {e}") from None
