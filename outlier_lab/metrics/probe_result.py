"""What one probe pass captured, the input of every measure: the same type for our GPT's
probe and a Hugging Face model's (outlier_lab/probe/), so the measures and figures never see
which model it was."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class ProbeResult:
    residual: list[torch.Tensor] = field(default_factory=list)  # n_layer x (B, T, C): block outputs
    down_input: list[torch.Tensor] = field(default_factory=list)  # n_layer x (B, T, hidden)
    down_output: list[torch.Tensor] = field(default_factory=list)  # n_layer x (B, T, C): the down projections' outputs
    # n_layer x the attention's probe extras: "probs" (B, H, T, T), "null_mass" (B, H, T), "max_logit",
    # "values", and a variant's own (its scale, gate, slot weight, ...)
    attention: list[dict[str, torch.Tensor]] = field(default_factory=list)
    # Bondarenko et al.'s tensor set, by module name: h.<l>.ln_1, h.<l>.attn.c_proj, h.<l>.ln_2,
    # h.<l>.mlp.c_proj, h.<l> (the block output), ln_f
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    down_weights: list[torch.Tensor] = field(default_factory=list)  # n_layer x (C, hidden): W of each down projection
    linear_weights: list[torch.Tensor] = field(default_factory=list)  # every projection's weight, (out, in)
    # (B, T) next-token cross-entropy at each position of the probe batch; NaN at the last,
    # whose target the batch does not hold
    token_loss: torch.Tensor | None = None
