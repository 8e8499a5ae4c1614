"""Muon for the hidden matrices, AdamW for everything else (``optim=muon``).

Muon (Jordan et al. 2024, https://kellerjordan.github.io/posts/muon/) orthogonalizes each
2-D update, so no basis of a matrix is privileged; Park et al. 2025 ("Outlier-Safe
Pre-Training", arXiv 2506.19697) make it the first part of their recipe against outliers, and
like modded-nanogpt keep AdamW for the embeddings, the output head and the 1-D parameters,
which are not hidden matrices. Here: torch's own ``torch.optim.Muon`` for the weights of the
``nn.Linear`` layers inside the transformer blocks (``hidden_matrices``); AdamW, with
LitGPT's decay grouping, for the rest: the tied ``wte``/``lm_head`` tensor, ``wpe``, the
norms, the biases and any variant's own parameters (4-D key/value biases, gates).

torch.optim.Muon (torch 2.13, torch/optim/_muon.py), as used here:
  * momentum: an exponential moving average, ``B <- mu B + (1 - mu) g`` (``lerp``; its
    docstring writes ``mu B + g``, which differs by the factor that the normalization removes),
    with **Nesterov** by default: the update is ``(1 - mu) g + mu B``; ``mu = 0.95``;
  * orthogonalization: 5 Newton-Schulz steps of Jordan's quintic (a, b, c) =
    (3.4445, -4.7750, 2.0315), in bfloat16, after dividing by the Frobenius norm (on the
    transpose when the matrix is tall);
  * learning rate: ``adjust_lr_fn=None`` ("original", Jordan's) scales lr by
    sqrt(max(1, rows / cols)); "match_rms_adamw" (Liu et al. 2025, "Muon is Scalable for LLM
    Training", Moonlight) by 0.2 sqrt(max(rows, cols)), which gives the update AdamW's RMS;
  * weight decay: decoupled, ``p <- p (1 - lr wd)`` with the unadjusted lr, as AdamW.

Defaults (configs/optim/muon.yaml): ``adjust_lr_fn: match_rms_adamw`` and ``muon_lr: null``,
i.e. Muon's groups start at ``optim.lr`` like the AdamW groups and follow the same warmup +
cosine schedule (LambdaLR scales every group's own base lr). Moonlight's adjustment exists so
that Muon reuses AdamW's tuned lr and weight decay: every recipe of this project (the CPU
study's lr 1e-2 and weight decay 2.0, the mechanism study's 3e-3) then runs with Muon
unchanged, and a comparison differs only in the update rule. Jordan's setting is
``optim.optimizer.adjust_lr_fn=original optim.optimizer.muon_lr=0.02``.

So ``optim=muon`` is Muon with Moonlight's step size, not Jordan's Muon, and not torch's own
default either (``adjust_lr_fn=None``, "original"). Jordan's reference
(github.com/KellerJordan/Muon, muon.py: ``update *= max(1, rows / cols) ** 0.5``, lr 0.02 by
default) has the same momentum, Newton-Schulz steps and decoupled decay as torch's
"original"; only the step per matrix differs. For the mechanism study's width 64 at its peak
lr 3e-3, Moonlight's rule steps 0.0048 (64 x 64), 0.0083 (192 x 64) and 0.0096 (256 x 64,
64 x 256); Jordan's rule at 0.02 steps 0.02, 0.035, 0.04 and 0.02: 4.2 times larger, 2.1
for the MLP's 64 x 256 down projection. Both follow the same warmup and cosine (to 1/10 of
the peak in that recipe), and the weight decay becomes 0.02 x wd per step instead of
3e-3 x wd. docs/mechanism.md ("Attention design or optimizer") ran both rules.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from outlier_lab.models.optim.chain import ChainedOptimizer


def hidden_matrices(model: nn.Module) -> list[nn.Parameter]:
    """The weights of the nn.Linear layers inside the transformer blocks (attention and MLP
    projections, a variant's Linear gates), in the model's parameter order."""
    blocks = model.transformer.h
    linear = {id(m.weight) for m in blocks.modules() if isinstance(m, nn.Linear)}
    return [p for p in blocks.parameters() if id(p) in linear and p.dim() == 2]


def muon_adamw(
    groups: Sequence[dict],
    *,
    lr: float,
    model: nn.Module,
    muon_lr: float | None = None,
    momentum: float = 0.95,
    nesterov: bool = True,
    ns_steps: int = 5,
    adjust_lr_fn: str | None = "match_rms_adamw",
    betas: Sequence[float] = (0.9, 0.95),
    eps: float = 1e-8,
    fused: bool = False,
) -> ChainedOptimizer:
    """One optimizer: torch.optim.Muon over the hidden matrices (lr ``muon_lr``, or ``lr``
    when None), torch.optim.AdamW over the other parameters of ``groups``; every group keeps
    its weight decay. Muon's groups come first in ``param_groups``."""
    hidden = {id(p) for p in hidden_matrices(model)}
    muon_groups, adam_groups = [], []
    for group in groups:
        params = list(group["params"])
        options = {k: v for k, v in group.items() if k != "params"}
        for target, mine in ((muon_groups, [p for p in params if id(p) in hidden]),
                             (adam_groups, [p for p in params if id(p) not in hidden])):
            if mine:
                target.append({"params": mine, **options})
    optimizers = []
    if muon_groups:
        optimizers.append(torch.optim.Muon(
            muon_groups, lr=lr if muon_lr is None else muon_lr, momentum=momentum, nesterov=nesterov,
            ns_steps=ns_steps, adjust_lr_fn=adjust_lr_fn,
        ))
    if adam_groups:
        optimizers.append(torch.optim.AdamW(adam_groups, lr=lr, betas=tuple(betas), eps=eps, fused=fused))
    return ChainedOptimizer(optimizers)
