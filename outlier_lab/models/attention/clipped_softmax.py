"""Clipped softmax (Bondarenko et al. 2023): p = clip((zeta - gamma) softmax(s) + gamma, 0, 1).
With gamma < 0 a head can put exactly zero weight on tokens, without extreme logits."""

import torch

from outlier_lab.models.attention import reference as ref
from outlier_lab.models.attention.base import CausalSelfAttention
from outlier_lab.models.attention.registry import register
from outlier_lab.errors import ConfigError


class ClippedSoftmaxProbs(torch.autograd.Function):
    """P from the masked logits s; the backward keeps only softmax(s) and the unclipped mask."""

    @staticmethod
    def forward(ctx, s, zeta, gamma):
        p = torch.softmax(s, dim=-1, dtype=torch.promote_types(s.dtype, torch.float32)).to(s.dtype)
        y = p.mul(zeta - gamma).add_(gamma)
        inside = (y > 0) & (y < 1)
        ctx.save_for_backward(p, inside)
        ctx.stretch = zeta - gamma
        return y.clamp_(0.0, 1.0)

    @staticmethod
    def backward(ctx, g):
        p, inside = ctx.saved_tensors
        g_soft = torch.where(inside, g, 0.0).mul_(ctx.stretch)  # through the clip and the affine map
        return p * (g_soft - (g_soft * p).sum(-1, keepdim=True)), None, None  # through softmax


@register("clipped_softmax")
class ClippedSoftmaxAttention(CausalSelfAttention):
    family = "elementwise"
    fused_kernel = "clipped_softmax"
    probe_rows = "null_mass"
    # the last one has zeta > 1, so that the upper clip is reached too
    test_options = ({}, {"alpha": 4.0}, {"alpha": 40.0}, {"gamma": -0.1, "zeta": 1.1})

    def __init__(self, n_embd: int, n_head: int, alpha: float = 12.0, zeta: float = 1.0, gamma: float | None = None,
                 **kwargs):
        super().__init__(n_embd, n_head, **kwargs)
        # gamma = -alpha / T with T the block size, fixed (not learned)
        gamma = -alpha / self.block_size if gamma is None else gamma
        if gamma > 0 or zeta < 1:
            raise ConfigError(
                f"clipped_softmax needs gamma <= 0 and zeta >= 1 (got gamma={gamma}, zeta={zeta}); "
                "gamma > 0 would give masked (future) tokens weight"
            )
        self.alpha, self.zeta, self.gamma = alpha, zeta, gamma

    def attend(self, q, k, v, x, probe):
        return self.elementwise_attend(q, k, v, probe, lambda s, mask: ClippedSoftmaxProbs.apply(s, self.zeta, self.gamma))

    def fused_params(self, t):
        return {"zeta": self.zeta, "gamma": self.gamma}

    def reference(self, x, rope, alpha, zeta, gamma, **options):
        q, k, v = ref.qkv(self, x, rope)
        gamma = -alpha / self.block_size if gamma is None else gamma
        s = ref.logits(q, k)
        p = torch.clamp((zeta - gamma) * ref.causal_softmax(s) + gamma, 0, 1) * ref.visible(s.size(-1), s.dtype)
        return {"out": ref.finish(self, p @ v), "probs": p, "null_mass": 1 - p.sum(-1)}
