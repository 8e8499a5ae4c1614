"""(d) Explicit attention bias (An et al. 2025; Sun et al. 2024): a learned extra key k' and
value v' per head, in the softmax: o_i = softmax([s_i, q_i.k'/sqrt d]) [V; v'] = (1 - pi_i) o_i + pi_i v',
with pi_i = e^{q_i.k'/sqrt d} / (e^{q_i.k'/sqrt d} + sum_j e^{s_ij}) the weight on the extra slot.
A head can put its weight on the slot instead of on a real token."""

import math

import torch
from torch import nn

from outlier_lab.models.attention import reference as ref
from outlier_lab.models.attention.base import CausalSelfAttention
from outlier_lab.models.attention.registry import register


@register("attn_bias")
class AttnBiasAttention(CausalSelfAttention):
    family = "slot"
    probe_rows = "null_mass"
    init_std = {"k_bias": 0.02, "v_bias": 0.02}

    def __init__(self, n_embd: int, n_head: int, **kwargs):
        super().__init__(n_embd, n_head, **kwargs)
        # names and shapes of the seed checkpoints: `.attn.k_bias`, `.attn.v_bias`, (1, H, 1, d)
        self.k_bias = nn.Parameter(torch.zeros(1, n_head, 1, self.head_dim))
        self.v_bias = nn.Parameter(torch.zeros(1, n_head, 1, self.head_dim))

    def init_extra_parameters(self):
        nn.init.normal_(self.k_bias, std=0.02)
        nn.init.normal_(self.v_bias, std=0.02)

    def _slot_reference(self, x, rope):
        """e^{s} on the visible keys, the slot's e^{q.k'/sqrt d}, their sum, and v."""
        q, k, v = ref.qkv(self, x, rope)
        e = ref.causal_exp(ref.logits(q, k))
        e_slot = torch.exp(q @ self.k_bias.transpose(-1, -2) / math.sqrt(self.head_dim))  # (B, H, T, 1)
        return e, e_slot, e_slot + e.sum(-1, keepdim=True), v
    def attend(self, q, k, v, x, probe):
        o, pi, extras = self.slot_attend(q, k, v, probe, slot_key=self.k_bias, slot_value=self.v_bias)
        if probe:
            extras["slot_weight"] = pi  # taken from the real keys: it is also the null mass
        return o, extras

    def reference(self, x, rope, **options):
        e, e_slot, denom, v = self._slot_reference(x, rope)
        p, pi = e / denom, e_slot / denom  # softmax over [s_i, q_i.k'/sqrt d]
        return {"out": ref.finish(self, p @ v + pi * self.v_bias), "probs": p, "null_mass": pi.squeeze(-1),
                "slot_weight": pi.squeeze(-1)}
