"""Scalable-Softmax, SSMax (Nakanishi 2025, arXiv 2501.19399): p_ij = softmax_j((s_h log n_i) s_ij),
with n_i = i + 1 the number of keys query i sees and s_h a learned scale per head. A plain
softmax flattens as n grows (its largest weight tends to 0); multiplying the logits by
s log n keeps a clearly larger logit dominant at any length. Written as the paper
suggests, by scaling the query, so that it runs on the softmax fast paths.

s is initialised to ``init_s``; the default, 1 / log(block_size), gives exactly the
softmax temperature at the training length at init."""

import math

import torch
from torch import nn

from outlier_lab.models.attention import reference as ref
from outlier_lab.models.attention.base import CausalSelfAttention
from outlier_lab.models.attention.registry import register


@register("scalable_softmax")
class ScalableSoftmaxAttention(CausalSelfAttention):
    test_options = ({}, {"init_s": 0.43})

    def __init__(self, n_embd: int, n_head: int, init_s: float | None = None, **kwargs):
        super().__init__(n_embd, n_head, **kwargs)
        self.init_s = 1.0 / math.log(self.block_size) if init_s is None else float(init_s)
        self.ssmax_scale = nn.Parameter(torch.full((n_head,), self.init_s))

    def init_extra_parameters(self):
        nn.init.constant_(self.ssmax_scale, self.init_s)

    def attend(self, q, k, v, x, probe):
        dtype = torch.promote_types(q.dtype, torch.float32)  # log n in at least fp32, even under bf16
        log_n = torch.arange(1, q.size(-2) + 1, device=q.device, dtype=dtype).log()  # (T,)
        factor = self.ssmax_scale.view(-1, 1, 1) * log_n.view(1, -1, 1)  # (H, T, 1)
        o, extras = self.softmax_attend(q * factor.to(q.dtype), k, v, probe)
        if probe:
            extras["scale"] = factor.squeeze(-1).T.expand(q.size(0), -1, -1)  # (B, T, H), as explicit_scale's
        return o, extras

    def reference(self, x, rope, **options):
        q, k, v = ref.qkv(self, x, rope)
        t = x.size(1)
        log_n = torch.log(torch.arange(1, t + 1, dtype=x.dtype))
        factor = torch.stack([self.ssmax_scale[h] * log_n for h in range(self.n_head)])  # (H, T)
        p = ref.causal_softmax(ref.logits(q, k) * factor.view(1, self.n_head, t, 1))
        return {"out": ref.finish(self, p @ v), "probs": p, "scale": factor.T.expand(x.size(0), t, self.n_head)}
