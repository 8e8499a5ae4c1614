"""Softpick (Zuhri et al. 2025): p_ij = relu(e^{s_ij} - 1) / (sum_{j<=i} |e^{s_ij} - 1| + eps).
Rectified numerator: a head can give every token zero weight. Computed with the shift
m = max(0, max_j s_ij): num relu(e^{s-m} - e^{-m}), den sum |e^{s-m} - e^{-m}| + eps e^{-m};
m >= 0 keeps e^{-m} <= 1, so neither term overflows."""

import torch

from models.attention.base import CausalSelfAttention
from models.attention.registry import register


@register("softpick")
class SoftpickAttention(CausalSelfAttention):
    def __init__(self, n_embd: int, n_head: int, eps: float = 1e-6, **kwargs):
        super().__init__(n_embd, n_head, **kwargs)
        self.eps = eps

    def attend(self, q, k, v, x, probe):
        def probs(s, mask):
            m = s.amax(dim=-1, keepdim=True).clamp(min=0).detach()  # any shift is exact
            shifted = torch.where(mask, torch.exp(s - m) - torch.exp(-m), 0.0)  # masked keys must add nothing
            return torch.relu(shifted) / (shifted.abs().sum(-1, keepdim=True) + self.eps * torch.exp(-m))

        return self.elementwise_attend(q, k, v, probe, probs)
