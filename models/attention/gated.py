"""Gated attention (Bondarenko et al. 2023): o_i^h <- sigmoid(w_h . x_i^(h) + b_h) o_i^h, with
x^(h) the h-th d-sized slice of the block input. A head can switch itself off with its gate
instead of attending to a no-op token. ``gate_input=full`` uses one Linear(C -> H) instead."""

import math

import torch
from torch import nn

from models.attention.base import CausalSelfAttention
from models.attention.registry import register
from errors import ConfigError

GATE_INPUTS = ("head", "full")


@register("gated")
class GatedAttention(CausalSelfAttention):
    def __init__(self, n_embd: int, n_head: int, init_gate: float = 0.25, gate_input: str = "head", **kwargs):
        super().__init__(n_embd, n_head, **kwargs)
        if not 0 < init_gate < 1:
            raise ConfigError(f"gated.init_gate={init_gate} must lie in (0, 1)")
        if gate_input not in GATE_INPUTS:
            raise ConfigError(f"gated.gate_input={gate_input!r}; choose one of {', '.join(GATE_INPUTS)}")
        self.init_gate, self.gate_input = init_gate, gate_input
        if gate_input == "head":  # one Linear(d -> 1) per head
            self.gate_weight = nn.Parameter(torch.zeros(n_head, self.head_dim))
            self.gate_bias = nn.Parameter(torch.zeros(n_head))
        else:
            self.gate_proj = nn.Linear(n_embd, n_head)

    def init_extra_parameters(self):
        weight, bias = (self.gate_weight, self.gate_bias) if self.gate_input == "head" else (
            self.gate_proj.weight, self.gate_proj.bias)
        nn.init.normal_(weight, std=0.02)
        nn.init.constant_(bias, math.log(self.init_gate / (1 - self.init_gate)))  # sigmoid(bias) = init_gate

    def attend(self, q, k, v, x, probe):
        o, extras = self.softmax_attend(q, k, v, probe)
        if self.gate_input == "head":
            x_heads = x.view(*x.shape[:-1], self.n_head, self.head_dim)  # (B, T, H, d)
            gate = torch.sigmoid((x_heads * self.gate_weight).sum(-1) + self.gate_bias)  # (B, T, H)
        else:
            gate = torch.sigmoid(self.gate_proj(x))
        if probe:
            extras["gate"] = gate
        return o * gate.transpose(1, 2).unsqueeze(-1).to(o.dtype), extras
