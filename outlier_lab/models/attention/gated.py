"""Gated attention (Bondarenko et al. 2023): o_i^h <- sigmoid(w_h . x_i^(h) + b_h) o_i^h, with
x^(h) the h-th d-sized slice of the block input. A head can switch itself off with its gate
instead of attending to a no-op token. ``gate_input=full`` uses one Linear(C -> H) instead."""

import math

import torch
from torch import nn

from outlier_lab.errors import ConfigError
from outlier_lab.models.attention import reference as ref
from outlier_lab.models.attention.base import CausalSelfAttention
from outlier_lab.models.attention.registry import register

GATE_INPUTS = ("head", "full")


class HeadLinear(nn.Module):
    """One Linear(d -> 1) per head: y_h = w_h . x^(h) + b_h, x^(h) the h-th d-sized slice of x.
    As a Linear(C -> H) its weight would be block-diagonal: input channel c = h*d + j meets
    only weight[h, j]. That is what the two smoothing hooks below use."""

    def __init__(self, n_head: int, head_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(n_head, head_dim))
        self.bias = nn.Parameter(torch.zeros(n_head))

    def reset_parameters(self) -> None:
        """PyTorch's default init of each head's Linear(d -> 1): U(-1/sqrt d, 1/sqrt d)."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # fan_in = d, as nn.Linear computes it
        nn.init.uniform_(self.bias, -1 / math.sqrt(self.weight.shape[1]), 1 / math.sqrt(self.weight.shape[1]))

    def forward(self, x):  # (B, T, C) -> (B, T, H)
        return (x.view(*x.shape[:-1], *self.weight.shape) * self.weight).sum(-1) + self.bias

    def input_channel_absmax(self) -> torch.Tensor:
        """max over outputs of |W_dense[:, c]| for every input channel c: (C,)."""
        return self.weight.abs().float().reshape(-1)

    def fold_input(self, shift: torch.Tensor, scale: torch.Tensor) -> None:
        """In place: the same outputs for an input x' with x = scale * x' + shift (per channel)."""
        self.bias.add_((self.weight.float() * shift.view_as(self.weight)).sum(-1).to(self.bias.dtype))
        self.weight.mul_(scale.view_as(self.weight).to(self.weight.dtype))


@register("gated")
class GatedAttention(CausalSelfAttention):
    init_means = {"gate": 0.25}
    test_options = ({}, {"gate_input": "full"})

    def __init__(self, n_embd: int, n_head: int, init_gate: float = 0.25, gate_input: str = "head", **kwargs):
        super().__init__(n_embd, n_head, **kwargs)
        if not 0 < init_gate < 1:
            raise ConfigError(f"gated.init_gate={init_gate} must lie in (0, 1)")
        if gate_input not in GATE_INPUTS:
            raise ConfigError(f"gated.gate_input={gate_input!r}; choose one of {', '.join(GATE_INPUTS)}")
        self.init_gate, self.gate_input = init_gate, gate_input
        self.gate = HeadLinear(n_head, self.head_dim) if gate_input == "head" else nn.Linear(n_embd, n_head)

    def init_extra_parameters(self):
        # Bondarenko et al.'s code keeps the gate Linear's PyTorch default init (the GPT's
        # N(0, 0.02) init is undone here) and sets the bias so that sigmoid(b) = init_gate.
        self.gate.reset_parameters()
        nn.init.constant_(self.gate.bias, math.log(self.init_gate / (1 - self.init_gate)))

    def attend(self, q, k, v, x, probe):
        o, extras = self.softmax_attend(q, k, v, probe)
        gate = torch.sigmoid(self.gate(x))  # (B, T, H)
        if probe:
            extras["gate"] = gate
        return o * gate.transpose(1, 2).unsqueeze(-1).to(o.dtype), extras

    def block_input_readers(self):
        return [self.c_attn, self.gate]

    def reference(self, x, rope, gate_input, **options):
        q, k, v = ref.qkv(self, x, rope)
        p = ref.causal_softmax(ref.logits(q, k))
        if gate_input == "head":
            d = self.head_dim
            gate = torch.stack([x[..., h * d : (h + 1) * d] @ self.gate.weight[h] + self.gate.bias[h]
                                for h in range(self.n_head)], dim=-1).sigmoid()
        else:
            gate = torch.sigmoid(ref.linear(self.gate, x))
        return {"out": ref.finish(self, ref.head_scale(p @ v, gate)), "probs": p, "gate": gate}
