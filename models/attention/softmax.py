"""(a) Standard softmax attention, the baseline: o = softmax(s) V."""

from models.attention.base import CausalSelfAttention
from models.attention.registry import register


@register("softmax")
class SoftmaxAttention(CausalSelfAttention):
    def attend(self, q, k, v, x, probe):
        return self.softmax_attend(q, k, v, probe)
