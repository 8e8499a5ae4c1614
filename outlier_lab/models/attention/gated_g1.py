"""Gated attention "G1" (Qiu et al. 2025, Qwen): o_i^h <- sigmoid(x_i W_theta)^h * o_i^h, a gate
after SDPA, elementwise (C -> H*d, the default) or headwise (C -> H), no bias."""

import torch
from torch import nn

from outlier_lab.models.attention import reference as ref
from outlier_lab.models.attention.base import CausalSelfAttention
from outlier_lab.models.attention.registry import register
from outlier_lab.errors import ConfigError

GRANULARITIES = ("elementwise", "headwise")


@register("gated_g1")
class GatedG1Attention(CausalSelfAttention):
    init_means = {"gate": 0.5}
    test_options = ({}, {"granularity": "headwise"})

    def __init__(self, n_embd: int, n_head: int, granularity: str = "elementwise", **kwargs):
        super().__init__(n_embd, n_head, **kwargs)
        if granularity not in GRANULARITIES:
            raise ConfigError(f"gated_g1.granularity={granularity!r}; choose one of {', '.join(GRANULARITIES)}")
        self.granularity = granularity
        self.gate_proj = nn.Linear(n_embd, n_embd if granularity == "elementwise" else n_head, bias=False)

    def attend(self, q, k, v, x, probe):
        o, extras = self.softmax_attend(q, k, v, probe)
        gate = torch.sigmoid(self.gate_proj(x)).view(*x.shape[:-1], self.n_head, -1)  # (B, T, H, d or 1)
        if probe:
            extras["gate"] = gate
        return o * gate.transpose(1, 2).to(o.dtype), extras

    def block_input_readers(self):
        return [self.c_attn, self.gate_proj]

    def reference(self, x, rope, granularity, **options):
        q, k, v = ref.qkv(self, x, rope)
        p = ref.causal_softmax(ref.logits(q, k))
        g = torch.sigmoid(x @ self.gate_proj.weight.T)
        if granularity == "elementwise":
            o = (p @ v) * ref.split_heads(g, self.head_dim)
            gate = g.reshape(*g.shape[:2], self.n_head, self.head_dim)
        else:
            o = ref.head_scale(p @ v, g)
            gate = g.unsqueeze(-1)
        return {"out": ref.finish(self, o), "probs": p, "gate": gate}
