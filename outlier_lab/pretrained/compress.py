"""The compression protocols (outlier_lab/compression/) on a Hugging Face model, scored as for
our runs: perplexity, its ratio to full precision, KL(p_fp || p) and top-1 agreement.

The protocols compress a copy of any module whose ``forward(ids)`` returns logits and whose
projections are ``nn.Linear``; ``logits_model`` makes such a copy of a transformers model
(GPT-2's Conv1D projections become the equivalent nn.Linear). The protocols that read our
GPT's own modules (``protocols.OUR_GPT_ONLY``: Bondarenko's every-activation W8A8, which
quantizes the residual sums our GPT names, and smoothing, which folds into our blocks'
readers) are refused for other models with one line."""

from __future__ import annotations

import torch
from torch import nn

from outlier_lab.errors import ConfigError
from outlier_lab.compression.evaluation import evaluate_protocols
from outlier_lab.compression.passes import working_copy
from outlier_lab.compression.protocols import OUR_GPT_ONLY, PROTOCOLS, check_protocols
from outlier_lab.probe.families import OURS, Family, projection_weight


def conv1d_as_linear(module: nn.Module) -> nn.Linear:
    """transformers' Conv1D (y = x W + b with W (in, out)) as the nn.Linear it equals."""
    weight = projection_weight(module)  # (out, in)
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=module.bias is not None, device=weight.device,
                       dtype=weight.dtype)
    with torch.no_grad():
        linear.weight.copy_(weight)
        if module.bias is not None:
            linear.bias.copy_(module.bias)
    return linear


def logits_model(model: nn.Module, family: Family) -> nn.Module:
    """A working copy of ``model`` whose ``forward(ids)`` returns the logits: our GPT as it is;
    a transformers model with Conv1D replaced by nn.Linear, no key-value cache and a forward
    hook that returns ``.logits`` from its output."""
    copy = working_copy(model)
    if family is OURS:
        return copy
    for module in list(copy.modules()):
        for child_name, child in list(module.named_children()):
            if type(child).__name__ == "Conv1D":
                setattr(module, child_name, conv1d_as_linear(child))
    copy.config.use_cache = False
    copy.register_forward_hook(lambda module, inputs, output: output.logits)
    return copy


def score_on_windows(model: nn.Module, family: Family, idx: torch.Tensor, names, keep_head_fp: bool = True):
    """``evaluation.evaluate_protocols`` on the windows ``idx`` (B, T): each window one
    sequence, its next tokens the targets; static activation ranges are calibrated on the
    same windows (a pretrained model's training data is not at hand)."""
    names = check_protocols(names)
    refused = [name for name in names if name in OUR_GPT_ONLY]
    if family is not OURS and refused:
        usable = [name for name in PROTOCOLS if name not in OUR_GPT_ONLY]
        raise ConfigError(f"compression protocol(s) {refused} need this project's GPT (its named activation "
                          f"points); for a Hugging Face model choose from {', '.join(usable)}")
    lm = logits_model(model, family)
    batches = [(row[None, :-1], row[None, 1:]) for row in idx.to(next(lm.parameters()).device)]
    return evaluate_protocols(lm, names, batches, batches, keep_head_fp=keep_head_fp)

