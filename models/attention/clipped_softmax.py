"""Clipped softmax (Bondarenko et al. 2023): p = clip((zeta - gamma) softmax(s) + gamma, 0, 1).
With gamma < 0 a head can put exactly zero weight on tokens, without extreme logits."""

import torch

from models.attention.base import CausalSelfAttention
from models.attention.registry import register
from models.errors import ConfigError


@register("clipped_softmax")
class ClippedSoftmaxAttention(CausalSelfAttention):
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
        def probs(s, mask):
            p = torch.softmax(s, dim=-1, dtype=torch.promote_types(s.dtype, torch.float32)).to(s.dtype)
            return torch.clamp((self.zeta - self.gamma) * p + self.gamma, 0.0, 1.0)

        return self.elementwise_attend(q, k, v, probe, probs)
