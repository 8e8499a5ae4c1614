"""(b) Explicit fixed bias (An et al. 2025): o = softmax(s) V + v', with v' of size C added
after the heads merge. The bias gives every token a constant it need not build itself."""

import torch
from torch import nn

from outlier_lab.models.attention import reference as ref
from outlier_lab.models.attention.base import CausalSelfAttention
from outlier_lab.models.attention.registry import register


@register("v_bias")
class VBiasAttention(CausalSelfAttention):
    init_std = {"v_bias": 0.0}

    def __init__(self, n_embd: int, n_head: int, **kwargs):
        super().__init__(n_embd, n_head, **kwargs)
        self.v_bias = nn.Parameter(torch.zeros(n_embd))  # the seed checkpoints' `.attn.v_bias`, (C,)

    def attend(self, q, k, v, x, probe):
        o, extras = self.softmax_attend(q, k, v, probe)
        return o + self.v_bias.view(1, self.n_head, 1, self.head_dim).to(o.dtype), extras

    def reference(self, x, rope, **options):
        q, k, v = ref.qkv(self, x, rope)
        p = ref.causal_softmax(ref.logits(q, k))
        return {"out": ref.finish(self, p @ v, extra=self.v_bias), "probs": p}
