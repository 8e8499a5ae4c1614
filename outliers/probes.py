"""Forward hooks that capture, in one no-grad eval pass over a fixed probe batch, what the
outlier metrics need: the residual stream after each block, the input of each FFN down
projection, and each attention layer's probe-mode extras (probabilities, null mass,
scale or gate values, max logit). Hooks and probe flags are always removed afterwards."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from models.gpt import GPT


@dataclass
class ProbeResult:
    residual: list[torch.Tensor] = field(default_factory=list)  # n_layer x (B, T, C)
    down_input: list[torch.Tensor] = field(default_factory=list)  # n_layer x (B, T, hidden)
    attention: list[dict[str, torch.Tensor]] = field(default_factory=list)  # n_layer x probe extras


@torch.no_grad()
def probe(model: GPT, idx: torch.Tensor) -> ProbeResult:
    """Run ``model`` on token ids ``idx`` in eval mode and return the captured tensors."""
    result = ProbeResult()
    blocks = list(model.transformer.h)
    handles = []
    was_training = model.training
    try:
        for block in blocks:
            block.attn.probe = True
            handles.append(block.register_forward_hook(lambda mod, inp, out: result.residual.append(out.detach())))
            handles.append(block.mlp.c_proj.register_forward_pre_hook(
                lambda mod, inp: result.down_input.append(inp[0].detach())))
        model.eval()
        model(idx)
        result.attention = [dict(block.attn.probe_out) for block in blocks]
    finally:
        for handle in handles:
            handle.remove()
        for block in blocks:
            block.attn.probe = False
            block.attn.probe_out = {}
        model.train(was_training)
    return result
