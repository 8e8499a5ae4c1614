"""Differential attention (Ye et al. 2024): o = (softmax(Q1 K1^T/sqrt d) - lam softmax(Q2 K2^T/sqrt d)) V,
then a per-head RMSNorm and x (1 - lam_init). The difference cancels common-mode attention
noise, such as weight parked on a sink token.

The H configured heads of size d pair up into H/2 differential heads: heads 2g and 2g+1 give
Q1/Q2 and K1/K2 of head g, and their values concatenate into one value of size 2d.
lam = exp(lq1 . lk1) - exp(lq2 . lk2) + lam_init, lam_init = 0.8 - 0.6 exp(-0.3 l) for layer l.
"""

import math

import torch
from torch import nn

from outlier_lab.models.attention import reference as ref
from outlier_lab.models.attention.base import CausalSelfAttention
from outlier_lab.models.attention.registry import register
from outlier_lab.errors import ConfigError


@register("differential")
class DifferentialAttention(CausalSelfAttention):
    probe_rows = "one_minus_lambda"  # A1 - lam A2: each row sums to 1 - lam
    test_options = ({}, {"layer_idx": 2})

    def __init__(self, n_embd: int, n_head: int, **kwargs):
        super().__init__(n_embd, n_head, **kwargs)
        if n_head % 2:
            raise ConfigError(f"differential attention pairs heads: model.n_head={n_head} must be even")
        d = self.head_dim
        self.lambda_init = 0.8 - 0.6 * math.exp(-0.3 * self.layer_idx)
        self.lambda_q1, self.lambda_k1, self.lambda_q2, self.lambda_k2 = (
            nn.Parameter(torch.zeros(d)) for _ in range(4))
        self.subln = nn.RMSNorm(2 * d, eps=1e-5)

    def init_extra_parameters(self):
        for p in (self.lambda_q1, self.lambda_k1, self.lambda_q2, self.lambda_k2):
            nn.init.normal_(p, std=0.1)

    def attend(self, q, k, v, x, probe):
        B, H, T, d = q.shape
        lam = (torch.exp(self.lambda_q1 @ self.lambda_k1) - torch.exp(self.lambda_q2 @ self.lambda_k2)
               + self.lambda_init).to(q.dtype)
        v_pairs = v.view(B, H // 2, 2, T, d).transpose(2, 3).reshape(B, H // 2, T, 2 * d)
        o1, e1 = self.softmax_attend(q[:, 0::2], k[:, 0::2], v_pairs, probe)
        o2, e2 = self.softmax_attend(q[:, 1::2], k[:, 1::2], v_pairs, probe)
        o = self.subln(o1 - lam * o2) * (1 - self.lambda_init)  # (B, H/2, T, 2d)
        extras = {"probs": e1["probs"] - lam * e2["probs"], "lambda": lam.detach().reshape(1)} if probe else {}
        return o.view(B, H // 2, T, 2, d).transpose(2, 3).reshape(B, H, T, d), extras

    def reference(self, x, rope, layer_idx=0, **options):
        q, k, v = ref.qkv(self, x, rope)
        lam_init = 0.8 - 0.6 * math.exp(-0.3 * layer_idx)
        lam = torch.exp(self.lambda_q1 @ self.lambda_k1) - torch.exp(self.lambda_q2 @ self.lambda_k2) + lam_init
        a1 = ref.causal_softmax(ref.logits(q[:, 0::2], k[:, 0::2]))
        a2 = ref.causal_softmax(ref.logits(q[:, 1::2], k[:, 1::2]))
        v2 = torch.cat([v[:, 0::2], v[:, 1::2]], dim=-1)  # group g: v heads 2g and 2g+1, 2d wide
        p = a1 - lam * a2
        o = p @ v2
        o = o / torch.sqrt(o.pow(2).mean(-1, keepdim=True) + 1e-5) * self.subln.weight
        return {"out": ref.finish(self, o * (1 - lam_init)), "probs": p, "lambda": lam.reshape(1)}
