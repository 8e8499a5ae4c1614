"""Weight compression on a working copy: symmetric fake quantization and magnitude pruning of
every nn.Linear weight, and Bondarenko et al.'s W8A8 weights (MSE-searched ranges, embeddings
and norms included)."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from outlier_lab.models.norms import NORMS
from outlier_lab.compression.passes import HEAD, linears, working_copy
from outlier_lab.compression.quantizers import quantize_symmetric, quantize_to_range
from outlier_lab.compression.ranges import mse_weight_range

# Modules whose weight Bondarenko et al. quantize (their autoquant_utils.module_map: Linear,
# LayerNorm, Embedding; RMSNorm is the LayerNorm of the llama style, and a single-scale norm's
# gain is one value). Biases stay in full precision, as in their QuantizationHijacker.
WEIGHT_MODULES = (nn.Linear, nn.Embedding, *NORMS)


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


def quantize_weights_mse(model: nn.Module, bits: int, keep_head_fp: bool) -> nn.Module:
    """A copy with Bondarenko et al.'s weight quantization: the weight of every nn.Linear,
    nn.Embedding (token and position tables), LayerNorm and RMSNorm fake-quantized per tensor
    on the range of ``ranges.mse_weight_range`` (``quantizers.quantize_to_range``).

    ``keep_head_fp`` (their quant_setup fp32_head) keeps the output head in full precision.
    Their token embedding is quantized all the same (a QuantEmbedding whose weight is
    quantized on the fly, while the head reads the stored fp32 tensor), so here the copy's
    embedding gets its own quantized tensor: the lookup reads 8-bit values, the head full
    precision. Without ``keep_head_fp`` the tied tensor is quantized once, for both."""
    quantized = working_copy(model)
    head = quantized.get_submodule(HEAD) if keep_head_fp else None
    seen = set()
    with torch.no_grad():
        for module in quantized.modules():
            weight = getattr(module, "weight", None)
            if not isinstance(module, WEIGHT_MODULES) or weight is None or module is head or id(weight) in seen:
                continue
            seen.add(id(weight))
            values = quantize_to_range(weight, bits, *mse_weight_range(weight, bits))
            if head is not None and weight is head.weight:
                module.weight = nn.Parameter(values, requires_grad=weight.requires_grad)  # untied (see above)
            else:
                weight.copy_(values)
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
