"""(f) Sigmoid attention (Ramapuram et al. 2024): p_ij = sigmoid(s_ij + b), b = -ln n.
Rows need not sum to 1, so no head is forced to attend anywhere."""

import math

import torch

from outlier_lab.models.attention import reference as ref
from outlier_lab.models.attention.base import CausalSelfAttention
from outlier_lab.models.attention.registry import register
from outlier_lab.errors import ConfigError

BIAS_LENGTHS = ("sequence", "block_size")


@register("sigmoid")
class SigmoidAttention(CausalSelfAttention):
    family = "elementwise"
    fused_kernel = "sigmoid"
    probe_rows = "null_mass"
    # the fixed bias is `logit_bias`: `bias` is the base class's Linear-bias flag
    test_options = ({}, {"bias_length": "block_size"}, {"logit_bias": -1.0})

    def __init__(self, n_embd: int, n_head: int, bias_length: str = "sequence", logit_bias: float | None = None,
                 **kwargs):
        super().__init__(n_embd, n_head, **kwargs)
        if bias_length not in BIAS_LENGTHS:
            raise ConfigError(f"sigmoid.bias_length={bias_length!r}; choose one of {', '.join(BIAS_LENGTHS)}")
        # n = the current sequence length (the seed code) or the training length (Apple uses -ln 2048)
        self.bias_length, self.fixed_bias = bias_length, logit_bias

    def logit_bias(self, t: int) -> float:
        if self.fixed_bias is not None:
            return float(self.fixed_bias)
        return -math.log(t if self.bias_length == "sequence" else self.block_size)

    def attend(self, q, k, v, x, probe):
        b = self.logit_bias(q.size(-2))

        def probs(s, mask):
            return torch.sigmoid(s + b)  # masked logits are -inf: weight exactly 0

        return self.elementwise_attend(q, k, v, probe, probs)

    def fused_params(self, t):
        return {"bias": self.logit_bias(t)}

    def reference(self, x, rope, bias_length, logit_bias, **options):
        q, k, v = ref.qkv(self, x, rope)
        n = x.size(1) if bias_length == "sequence" else self.block_size
        b = logit_bias if logit_bias is not None else -math.log(n)
        s = ref.logits(q, k)
        p = torch.sigmoid(s + b) * ref.visible(s.size(-1), s.dtype)
        return {"out": ref.finish(self, p @ v), "probs": p, "null_mass": 1 - p.sum(-1)}
