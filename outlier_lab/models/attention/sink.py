"""Learned attention sinks (gpt-oss): p_ij = e^{s_ij} / (e^{beta_h} + sum_j e^{s_ij}), i.e.
o = sigmoid(lse_i - beta_h) softmax(s) V, with a learned logit beta per head (not scaled by
1/sqrt d): an extra slot of value 0 whose pull each head learns."""

import torch
from torch import nn

from outlier_lab.models.attention import reference as ref
from outlier_lab.models.attention.base import CausalSelfAttention
from outlier_lab.models.attention.registry import register


@register("sink")
class SinkAttention(CausalSelfAttention):
    family = "slot"
    probe_rows = "null_mass"
    init_std = {"sinks": 0.02}

    def __init__(self, n_embd: int, n_head: int, **kwargs):
        super().__init__(n_embd, n_head, **kwargs)
        self.sinks = nn.Parameter(torch.zeros(n_head))

    def init_extra_parameters(self):
        nn.init.normal_(self.sinks, std=0.02)

    def attend(self, q, k, v, x, probe):
        o, _, extras = self.slot_attend(q, k, v, probe, slot_bias=self.sinks.view(1, -1, 1, 1))
        return o, extras

    def reference(self, x, rope, **options):
        q, k, v = ref.qkv(self, x, rope)
        e = ref.causal_exp(ref.logits(q, k))
        p = e / (torch.exp(self.sinks).view(1, -1, 1, 1) + e.sum(-1, keepdim=True))
        return {"out": ref.finish(self, p @ v), "probs": p, "null_mass": 1 - p.sum(-1)}
