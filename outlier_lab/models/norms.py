"""The GPT's norms: per-channel (nn.LayerNorm for ``style=gpt2``, nn.RMSNorm for ``llama``) or
single-scale (``model.norm_scale=single``), and the per-head q/k norm of ``model.qk_norm``.

Single-scale norm: Park et al. 2025, "Outlier-Safe Pre-Training for Robust 4-Bit
Quantization of Large Language Models" (arXiv 2506.19697; dmis-lab/Outlier-Safe-Pre-Training,
example_modeling_flax.py), their Single-Scale RMSNorm (SSNorm): the normalization is
unchanged, but one learned scalar gain g replaces the per-channel gain vector,
y = g * x / sqrt(mean(x^2) + eps), which removes a per-channel route to outlier channels.
Their code builds it as Flax's ``nn.RMSNorm(feature_axes=())``: a scalar scale initialised
to 1, used for *every* norm of the model, the two of each block and the final one; so here
ln_1, ln_2 and ln_f. For ``style=gpt2`` the same idea on LayerNorm (our extension, not in
the paper): y = g * (x - mean(x)) / sqrt(var(x) + eps), plus the per-channel bias only
when ``model.bias`` (a shift, not a per-channel scale). eps is the model's usual 1e-5
(Flax's default is 1e-6), so that the gain is the only difference from the per-channel norm.
Norms inside an attention variant's own formula (differential's per-head subln) and the q/k
norm below keep their per-dimension gains: they act within a head, not on the residual
channels.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from outlier_lab.errors import ConfigError

NORM_SCALES = ("channel", "single")
EPS = 1e-5


class SingleScaleNorm(nn.Module):
    """RMSNorm (``centered=False``) or LayerNorm (``centered=True``) with one scalar gain,
    ``weight`` of shape (1,), initialised to 1; ``bias`` (C,) only for a centered norm with
    ``bias=True``. See the module docstring for the formula and its source."""

    def __init__(self, n_embd: int, centered: bool, bias: bool = False, eps: float = EPS):
        super().__init__()
        self.normalized_shape, self.centered, self.eps = (n_embd,), centered, eps
        self.weight = nn.Parameter(torch.ones(1))
        self.bias = nn.Parameter(torch.zeros(n_embd)) if centered and bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.centered:
            y = F.layer_norm(x, self.normalized_shape, eps=self.eps)
        else:
            y = F.rms_norm(x, self.normalized_shape, eps=self.eps)
        y = y * self.weight
        return y if self.bias is None else y + self.bias

    def per_channel(self) -> nn.LayerNorm | nn.RMSNorm:
        """The per-channel norm that computes the same function: the gain g in every channel
        (what an inference engine that knows only per-channel norms loads)."""
        C = self.normalized_shape[0]
        norm = (nn.LayerNorm(C, eps=self.eps, bias=self.bias is not None) if self.centered
                else nn.RMSNorm(C, eps=self.eps))
        norm = norm.to(device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            norm.weight.copy_(self.weight.expand(C))
            if self.bias is not None:
                norm.bias.copy_(self.bias)
        return norm

    def extra_repr(self) -> str:
        return (f"{self.normalized_shape[0]}, {'LayerNorm' if self.centered else 'RMSNorm'}, eps={self.eps}, "
                f"bias={self.bias is not None}")


# Every class a GPT's ln_1, ln_2, ln_f can be (the compression protocols treat them alike).
NORMS = (nn.LayerNorm, nn.RMSNorm, SingleScaleNorm)


def check_norm_options(norm_scale, qk_norm) -> None:
    """One ConfigError line listing the valid choices."""
    if norm_scale not in NORM_SCALES:
        raise ConfigError(f"unknown model.norm_scale {norm_scale!r}; choose one of {', '.join(NORM_SCALES)}")
    if not isinstance(qk_norm, bool):
        raise ConfigError(f"model.qk_norm={qk_norm!r}; choose one of true, false")


def build_norm(style: str, n_embd: int, bias: bool, norm_scale: str = "channel") -> nn.Module:
    """A block or final norm: LayerNorm for gpt2, RMSNorm for llama; per-channel or single-scale."""
    if norm_scale == "single":
        return SingleScaleNorm(n_embd, centered=style == "gpt2", bias=bias)
    return nn.LayerNorm(n_embd, bias=bias) if style == "gpt2" else nn.RMSNorm(n_embd, eps=EPS)


def qk_norm(head_dim: int) -> nn.RMSNorm:
    """The q (or k) norm of ``model.qk_norm``: RMSNorm over each head's d channels, one gain
    vector of size d shared by all heads, initialised to 1; applied after the head split and
    before rotary positions. This is Qwen3's form (transformers' Qwen3Attention: q_norm and
    k_norm are RMSNorm(head_dim), "only on the head dim"); OLMo-2 instead normalises the whole
    H*d projection with an H*d gain. The logits keep their 1/sqrt(d) scale."""
    return nn.RMSNorm(head_dim, eps=EPS)
