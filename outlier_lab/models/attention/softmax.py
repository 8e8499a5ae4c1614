"""(a) Standard softmax attention, the baseline: o = softmax(s) V."""

from outlier_lab.models.attention import reference as ref
from outlier_lab.models.attention.base import CausalSelfAttention
from outlier_lab.models.attention.registry import register


@register("softmax")
class SoftmaxAttention(CausalSelfAttention):
    def attend(self, q, k, v, x, probe):
        return self.softmax_attend(q, k, v, probe)

    def reference(self, x, rope, **options):
        q, k, v = ref.qkv(self, x, rope)
        p = ref.causal_softmax(ref.logits(q, k))
        return {"out": ref.finish(self, p @ v), "probs": p}
