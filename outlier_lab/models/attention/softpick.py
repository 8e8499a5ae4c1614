"""Softpick (Zuhri et al. 2025): p_ij = relu(e^{s_ij} - 1) / (sum_{j<=i} |e^{s_ij} - 1| + eps).
Rectified numerator: a head can give every token zero weight. Computed with the shift
m = max(0, max_j s_ij): num relu(e^{s-m} - e^{-m}), den sum |e^{s-m} - e^{-m}| + eps e^{-m};
m >= 0 keeps e^{-m} <= 1, so neither term overflows."""

import torch

from outlier_lab.models.attention import reference as ref
from outlier_lab.models.attention.base import CausalSelfAttention
from outlier_lab.models.attention.registry import register


class SoftpickProbs(torch.autograd.Function):
    """P from the masked logits s, with a hand-written backward that keeps one (T, T) tensor,
    u = e^{s-m} - e^{-m}, instead of autograd's chain of intermediates.

    With D_i the denominator and g = dL/dP: dL/ds_ik = e^{s_ik-m} (g_ik [u_ik > 0] - sign(u_ik) sum_j g_ij P_ij) / D_i.
    (m is any constant shift, so it carries no gradient.)"""

    @staticmethod
    def forward(ctx, s, mask, eps):
        m = s.amax(dim=-1, keepdim=True).clamp_(min=0)
        c = torch.exp(-m)
        u = torch.exp(s - m).sub_(c).masked_fill_(~mask, 0.0)  # masked keys must add nothing
        den = u.abs().sum(-1, keepdim=True).add_(eps * c)
        ctx.save_for_backward(u, c, den)
        return torch.relu(u).div_(den)

    @staticmethod
    def backward(ctx, g):
        u, c, den = ctx.saved_tensors
        g_dot_p = (g * torch.relu(u)).sum(-1, keepdim=True).div_(den)
        grad = torch.where(u > 0, g, 0.0).sub_(torch.sign(u).mul_(g_dot_p))
        return grad.mul_(u + c).div_(den), None, None


@register("softpick")
class SoftpickAttention(CausalSelfAttention):
    family = "elementwise"
    fused_kernel = "softpick"
    probe_rows = "null_mass"
    test_options = ({}, {"eps": 1e-2})

    def __init__(self, n_embd: int, n_head: int, eps: float = 1e-6, **kwargs):
        super().__init__(n_embd, n_head, **kwargs)
        self.eps = eps

    def attend(self, q, k, v, x, probe):
        return self.elementwise_attend(q, k, v, probe, lambda s, mask: SoftpickProbs.apply(s, mask, self.eps))

    def fused_params(self, t):
        return {"eps": self.eps}

    def reference(self, x, rope, eps, **options):
        q, k, v = ref.qkv(self, x, rope)
        s = ref.logits(q, k)
        e = (torch.exp(s) - 1) * ref.visible(s.size(-1), s.dtype)
        p = torch.relu(e) / (e.abs().sum(-1, keepdim=True) + eps)
        return {"out": ref.finish(self, p @ v), "probs": p, "null_mass": 1 - p.sum(-1)}
