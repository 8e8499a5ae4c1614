"""(e) Explicit context-aware scaling factor, the seed paper's proposal (An et al. 2025).

o_i^h = S_h(x_i) * (softmax(s) V)_i^h with S(x) = 2 sigmoid(W_s x + b_s) in (0, 2)^H.
A head that should do nothing can set S -> 0 instead of building an attention sink.
"""

import torch
from torch import nn

from outlier_lab.models.attention import reference as ref
from outlier_lab.models.attention.base import CausalSelfAttention
from outlier_lab.models.attention.registry import register


@register("explicit_scale")
class ExplicitScaleAttention(CausalSelfAttention):
    init_means = {"scale": 1.0}

    def __init__(self, n_embd: int, n_head: int, **kwargs):
        super().__init__(n_embd, n_head, **kwargs)
        # Sequential so that the parameter names match the seed checkpoints: context_scale.0.*
        self.context_scale = nn.Sequential(nn.Linear(n_embd, n_head, bias=True))

    def init_extra_parameters(self):
        # weight N(0, 0.02) and bias 0 make S = 2 sigmoid(~0) ~= 1 at init.
        nn.init.normal_(self.context_scale[0].weight, std=0.02)
        nn.init.zeros_(self.context_scale[0].bias)

    def attend(self, q, k, v, x, probe):
        o, extras = self.softmax_attend(q, k, v, probe)
        scale = 2.0 * torch.sigmoid(self.context_scale(x))  # (B, T, H)
        if probe:
            extras["scale"] = scale
        return o * scale.transpose(1, 2).unsqueeze(-1).to(o.dtype), extras

    def block_input_readers(self):
        return [self.c_attn, self.context_scale[0]]

    def reference(self, x, rope, **options):
        q, k, v = ref.qkv(self, x, rope)
        p = ref.causal_softmax(ref.logits(q, k))
        scale = 2 * torch.sigmoid(ref.linear(self.context_scale[0], x))  # (B, T, H)
        return {"out": ref.finish(self, ref.head_scale(p @ v, scale)), "probs": p, "scale": scale}
