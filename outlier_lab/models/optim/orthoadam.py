"""OrthoAdam (``optim=orthoadam``): Adam in a fixed random orthogonal basis per parameter.

Kaul, Ma, Elezi & Deng 2024, "From Attention to Activation: Unravelling the Enigmas of Large
Language Models" (arXiv 2410.17174, ICLR 2025; code: github.com/prannaykaul/OrthoAdam)
identify adaptive optimizers as the main source of the large outlier activations: Adam
tracks its moments, and divides by sqrt(v), coordinate by coordinate in the parameters' own
basis. OrthoAdam keeps Adam but runs it in a random basis that is fixed for the whole run:
for each parameter, with a fixed orthogonal Q,

    g~ = Q g                                      the gradient, rotated
    m = b1 m + (1 - b1) g~ ;  v = b2 v + (1 - b2) g~^2        Adam's moments, in that basis
    theta <- theta - lr Q^T (m^ / (sqrt(v^) + eps))           the step, rotated back

with m^, v^ bias-corrected as in Adam. Since Q is orthogonal, SGD would be unchanged by it;
only the coordinate-wise division sees the new basis.

How Q is built here: not one rotation per parameter, but the Kronecker product of one
orthogonal matrix per axis of the parameter, ``Q = Q_0 (x) Q_1 (x) ...``; for a matrix
gradient G this is ``Q_0 G Q_1^T``. An axis longer than ``max_dim`` is rotated
block-diagonally, by independent matrices of at most ``max_dim`` rows (GPT-2's 50,257-token
vocabulary axis), and an axis of length 1 not at all. Each factor is Haar-distributed (QR of
a Gaussian matrix with R's diagonal signs folded in; Mezzadri 2007). Compared with one
Haar-random rotation of the whole flattened parameter (n = n_0 n_1 entries):

- For a 1-D parameter (a bias, a norm gain) of at most ``max_dim`` entries the two are the
  same: one Haar rotation of the whole vector.
- For a matrix, Q_0 (x) Q_1 is orthogonal and every rotated coordinate still mixes every
  entry of G, but it is not Haar on O(n): it ranges over n_0(n_0-1)/2 + n_1(n_1-1)/2
  dimensions of the n(n-1)/2 of O(n) (34,656 against 134 million for a 256 x 64 matrix).
  Each new coordinate is a rank-one direction q_i r_j^T, and the rotated gradient keeps the
  singular values of G, which a dense rotation of the flattened gradient does not. Adam's
  per-coordinate moments are thus taken along these rank-one directions, where a dense Q
  would take them along generic directions of the flattened parameter.
- Blocks (axes over ``max_dim``) and length-1 axes restrict it further.

A dense Q would need n^2 entries: 1 GiB (float32) for one 256 x 64 MLP matrix of the
mechanism study's width-64 model, 17 GB at model=nano's default width 128, so it is not
offered. Whether Kaul et al. draw dense rotations or structured ones could not be checked:
neither their code nor the full text of their Algorithm 1 was readable when this was written.
The factors are drawn in float64 on the CPU from a generator seeded with ``seed`` and the
parameter's index in the optimizer, so the matrices are the same on every device and rank
and after a resume: they are regenerated, not stored, which keeps checkpoints the size of
Adam's (the seed is in each group, hence in the checkpoint). They live on the parameters'
device: 20 MiB for model=nano, 263 MiB for small, 2.8 GiB for GPT-2 124M (6x its weights).
Weight decay is AdamW's decoupled ``theta <- theta (1 - lr wd)``, the same in either basis.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor


def haar_orthogonal(n: int, generator: torch.Generator) -> Tensor:
    """A Haar-random n x n orthogonal matrix (float64, CPU)."""
    q, r = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))  # column j times sign(R_jj): uniform over O(n)


def rotations(shape: Sequence[int], seed: int, max_dim: int) -> list[list[Tensor] | None]:
    """Per axis of a parameter of this shape: its orthogonal blocks (in order along the axis),
    or None for an axis of length 1."""
    generator = torch.Generator().manual_seed(seed % 2**63)
    factors = []
    for size in shape:
        if size == 1:
            factors.append(None)
            continue
        blocks = -(-size // max_dim)
        factors.append([haar_orthogonal(len(part), generator) for part in torch.arange(size).tensor_split(blocks)])
    return factors


def rotate(x: Tensor, factors: Sequence[Sequence[Tensor] | None], inverse: bool = False) -> Tensor:
    """``(Q_0 (x) Q_1 (x) ...) x`` applied axis by axis (``inverse``: the transpose)."""
    for axis, blocks in enumerate(factors):
        if blocks is None:
            continue
        moved = x.movedim(axis, 0)
        rows = moved.reshape(moved.shape[0], -1)
        parts = rows.split([q.shape[0] for q in blocks]) if len(blocks) > 1 else (rows,)
        out = [(q.T if inverse else q) @ part for q, part in zip(blocks, parts)]
        x = (out[0] if len(out) == 1 else torch.cat(out)).reshape(moved.shape).movedim(0, axis)
    return x


class OrthoAdam(torch.optim.Optimizer):
    """Adam with each parameter's gradient rotated by a fixed orthogonal matrix (module
    docstring). ``seed`` draws the matrices; ``max_dim`` bounds the size of one factor."""

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: Sequence[float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, seed: int = 0, max_dim: int = 4096):
        if not (lr >= 0 and eps >= 0 and weight_decay >= 0 and all(0 <= b < 1 for b in betas)):
            raise ValueError(f"OrthoAdam: invalid lr={lr}, betas={betas}, eps={eps} or weight_decay={weight_decay}")
        if max_dim < 2:
            raise ValueError(f"OrthoAdam: max_dim must be at least 2, got {max_dim}")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, seed=int(seed), max_dim=max_dim)
        super().__init__(params, defaults)
        self._factors: dict[int, list] = {}  # id(param) -> its rotation, drawn at its first step

    def factors(self, p: Tensor, index: int, group: dict) -> list[list[Tensor] | None]:
        """The rotation of parameter number ``index`` (the order of ``state_dict``)."""
        key = id(p)
        if key not in self._factors:
            drawn = rotations(p.shape, group["seed"] * 1_000_003 + index, group["max_dim"])
            self._factors[key] = [None if f is None else [q.to(p.device, p.dtype) for q in f] for f in drawn]
        return self._factors[key]

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self._factors.clear()  # redrawn from the loaded groups' seeds

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        index = -1
        for group in self.param_groups:
            lr, (beta1, beta2), eps, decay = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                index += 1
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("OrthoAdam does not support sparse gradients")
                factors = self.factors(p, index, group)
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                g = rotate(p.grad, factors)
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.lerp_(g, 1 - beta1)
                v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                bias1, bias2 = 1 - beta1 ** state["step"], 1 - beta2 ** state["step"]
                update = m / (v.sqrt() / bias2 ** 0.5).add_(eps)
                p.mul_(1 - lr * decay)
                p.add_(rotate(update, factors, inverse=True), alpha=-lr / bias1)
        return loss
