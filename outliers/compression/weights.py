"""Weight compression on a working copy: symmetric fake quantization and magnitude pruning of
every nn.Linear weight."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from outliers.compression.passes import HEAD, linears, working_copy
from outliers.compression.quantizers import quantize_symmetric


def _unique_weights(model: nn.Module, skip_head: bool = False) -> Iterator[tuple[str, nn.Linear]]:
    """Each nn.Linear once per weight tensor (a weight shared by two Linears is visited once)."""
    seen = set()
    for name, module in linears(model):
        if (skip_head and name == HEAD) or id(module.weight) in seen:
            continue
        seen.add(id(module.weight))
        yield name, module


def quantize_weights(model: nn.Module, bits: int, per_channel: bool = False, skip_head: bool = False) -> nn.Module:
    """A copy with every nn.Linear weight fake-quantized by ``quantize_symmetric``, per tensor
    or per output channel (one scale per row).

    The output head is tied to the token embedding, so quantizing ``lm_head.weight``
    quantizes the embedding too (intended for the weights-only protocols: the seed paper
    quantizes every weight). With ``skip_head=True`` the head, and with it the tied
    embedding, stay in full precision (Bondarenko). The embedding is not an nn.Linear, so
    nothing else reaches it and no untying is needed.
    """
    quantized = working_copy(model)
    with torch.no_grad():
        for _, linear in _unique_weights(quantized, skip_head):
            linear.weight.copy_(quantize_symmetric(linear.weight, bits, dim=0 if per_channel else None))
    return quantized


def prune_magnitude(model: nn.Module, sparsity: float = 0.5) -> nn.Module:
    """A copy with unstructured magnitude pruning (seed paper): in each nn.Linear separately
    the round(sparsity * numel) weights of smallest |w| are set to zero, exactly that many
    (ties broken by flat index, lower first, via a stable sort). The tied output head /
    embedding counts as one Linear (``lm_head``).

    Explicit rather than torch.nn.utils.prune: its L1Unstructured picks the weights with
    torch.topk, which breaks ties in no documented order, and it re-parametrizes the module
    (weight_orig and a mask) where a plain weight with zeros is wanted."""
    pruned = working_copy(model)
    with torch.no_grad():
        for _, linear in _unique_weights(pruned):
            flat = linear.weight.view(-1)
            count = int(round(sparsity * flat.numel()))
            smallest = torch.argsort(flat.abs(), stable=True)[:count]
            flat[smallest] = 0
    return pruned
