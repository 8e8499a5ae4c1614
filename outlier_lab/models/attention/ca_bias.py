"""(c) Explicit context-aware bias (An et al. 2025): o_i = softmax(s)_i V + pi_i v', with the
slot weight pi_i of ``attn_bias`` (same k', v' parameters) but the softmax over the real keys
left unscaled: the bias is added, not mixed in."""

import torch

from outlier_lab.models.attention import reference as ref
from outlier_lab.models.attention.attn_bias import AttnBiasAttention
from outlier_lab.models.attention.registry import register


@register("ca_bias")
class ContextAwareBiasAttention(AttnBiasAttention):
    family = "slot"
    # The weights on the real keys are plain softmax(s) and sum to 1; pi v' is added on top
    # (the seed code's ca_bias). So the probe reports softmax(s), null mass 0, and pi as
    # slot_weight: the contrast with attn_bias, whose rows sum to 1 - pi, is the seed
    # paper's central one.
    probe_rows = "one"

    def attend(self, q, k, v, x, probe):
        _, pi, _ = self.slot_attend(q, k, v, False, slot_key=self.k_bias)  # pi only; its value output unused
        o, extras = self.softmax_attend(q, k, v, probe)
        if probe:
            extras["slot_weight"] = pi
        return o + pi.unsqueeze(-1) * self.v_bias.to(o.dtype), extras

    def reference(self, x, rope, **options):
        e, e_slot, denom, v = self._slot_reference(x, rope)
        pi = e_slot / denom
        o = (e / e.sum(-1, keepdim=True)) @ v + pi * self.v_bias  # the full softmax(s) V, plus pi v'
        p = e / e.sum(-1, keepdim=True)
        return {"out": ref.finish(self, o), "probs": p, "null_mass": torch.zeros_like(pi.squeeze(-1)),
                "slot_weight": pi.squeeze(-1)}
