"""ReLU attention (Guo et al. 2024, "Active-Dormant Attention Heads"): the softmax replaced
by a rectifier averaged over the visible keys, p_ij = relu(s_ij) / (i + 1) for j <= i, with
s_ij = q_i.k_j / sqrt(d) and i the 0-based query index (i + 1 keys under the causal mask).
As in the authors' code (their ``Attention.forward`` with ``attn_use_relu=True``), the
weights are computed in at least float32 and cast back to the activations' dtype before
P V. Rows are not normalised: 1 - sum_j p_ij is the row's null mass, which is negative
where the rectified logits exceed i + 1 on average (relu is unbounded); a head whose
logits are all <= 0 gives every key zero weight (a dormant head)."""

import torch

from outlier_lab.models.attention import reference as ref
from outlier_lab.models.attention.base import CausalSelfAttention
from outlier_lab.models.attention.registry import register


@register("relu")
class ReluAttention(CausalSelfAttention):
    family = "elementwise"
    fused_kernel = None  # no Triton kernel: CUDA runs the eager (chunked) path
    probe_rows = "null_mass"

    def attend(self, q, k, v, x, probe):
        def probs(s, mask):
            # masked logits are -inf: relu gives exactly 0. mask is bottom-right aligned on
            # every path (whole or one query chunk), so its row sums are the i + 1 visible keys
            visible = mask.sum(-1, keepdim=True)
            wide = torch.promote_types(s.dtype, torch.float32)
            return (torch.relu(s.to(wide)) / visible).to(s.dtype)

        return self.elementwise_attend(q, k, v, probe, probs)

    def reference(self, x, rope, **options):
        q, k, v = ref.qkv(self, x, rope)
        s = ref.logits(q, k)
        t = s.size(-1)
        keys = torch.arange(1, t + 1, dtype=s.dtype).unsqueeze(-1)  # query i sees i + 1 keys
        p = torch.relu(s) * ref.visible(t, s.dtype) / keys
        return {"out": ref.finish(self, p @ v), "probs": p, "null_mass": 1 - p.sum(-1)}
