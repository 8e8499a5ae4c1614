"""(c) Explicit context-aware bias (An et al. 2025): o_i = softmax(s)_i V + pi_i v', with the
slot weight pi_i of ``attn_bias`` (same k', v' parameters) but the softmax over the real keys
left unscaled: the bias is added, not mixed in."""

from models.attention import reference as ref
from models.attention.attn_bias import AttnBiasAttention
from models.attention.registry import register


@register("ca_bias")
class ContextAwareBiasAttention(AttnBiasAttention):
    def attend(self, q, k, v, x, probe):
        # pi from the slot softmax (its value output unused), o from plain softmax. The probe
        # reports the slot softmax's weights, as for attn_bias: null_mass = pi.
        _, pi, extras = self.slot_attend(q, k, v, probe, slot_key=self.k_bias)
        o, _ = self.softmax_attend(q, k, v, False)
        return o + pi.unsqueeze(-1) * self.v_bias.to(o.dtype), extras

    def reference(self, x, rope, **options):
        e, e_slot, denom, v = self._slot_reference(x, rope)
        pi = e_slot / denom
        o = (e / e.sum(-1, keepdim=True)) @ v + pi * self.v_bias  # the full softmax(s) V, plus pi v'
        return {"out": ref.finish(self, o), "probs": e / denom, "null_mass": pi.squeeze(-1)}
