"""softmax1 (Miller 2023, "Attention is off by one"): p_ij = e^{s_ij} / (1 + sum_j e^{s_ij}),
i.e. o = sigmoid(lse_i) softmax(s) V: an implicit extra slot with logit 0 and value 0, so a
head can attend to nothing. The same as attn_bias with k' = v' = 0 fixed."""


from outlier_lab.models.attention import reference as ref
from outlier_lab.models.attention.base import CausalSelfAttention
from outlier_lab.models.attention.registry import register


@register("softmax1")
class Softmax1Attention(CausalSelfAttention):
    family = "slot"
    probe_rows = "null_mass"

    def attend(self, q, k, v, x, probe):
        o, _, extras = self.slot_attend(q, k, v, probe)  # slot logit 0, slot value 0
        return o, extras

    def reference(self, x, rope, **options):
        q, k, v = ref.qkv(self, x, rope)
        e = ref.causal_exp(ref.logits(q, k))
        p = e / (1 + e.sum(-1, keepdim=True))
        return {"out": ref.finish(self, p @ v), "probs": p, "null_mass": 1 - p.sum(-1)}
