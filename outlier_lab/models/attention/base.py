"""The shared part of every attention variant: QKV projection, head split and merge,
output projection. A variant states only its own mathematics in ``attend``."""

from __future__ import annotations

import inspect

import torch
from torch import nn

from outlier_lab import kernels
from outlier_lab.errors import ConfigError
from outlier_lab.models import norms


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with nanoGPT parameter names (``c_attn``, ``c_proj``).

    Subclasses override ``attend(q, k, v, x, probe)`` and return ``(o, extras)``: o is the
    per-head output (B, H, T, d) *before* the output projection, and extras holds what the
    outlier probes need (``probs``, ``null_mass``, ``scale``, ...) when ``probe`` is True;
    the base adds ``max_logit`` (B, H), the largest causal logit of each head, and
    ``values`` (B, H, T, d).
    Set ``module.probe = True`` to run the exact (eager) path and keep those extras in
    ``module.probe_out`` after each forward.

    ``qk_norm=True`` (``model.qk_norm``) normalises q and k right after the head split,
    before rotary positions, so every variant's ``attend`` (and its reference, through
    ``reference.qkv``) sees normalised queries and keys; learned slot keys (attn_bias,
    ca_bias) are parameters and stay as they are.

    Two identity modules expose activations to forward hooks (the W8A8 protocol of
    outlier_lab/compression/ quantizes there): ``attn_out``, the per-head output o (B, H, T, d)
    that ``attend`` returns, i.e. what c_proj reads; and ``attn_probs``, the attention
    weights before they multiply V. The weights exist only on the eager path, so
    ``attn_probs`` is called only when ``module.expose_probs = True``, which makes every
    attend helper run eager (as probing does) and pass through it: softmax(s) for the
    softmax family (each map of differential), the weights of the keys and the slot as one
    (B, H, T, T + 1) tensor for the slot family, P = f(s) for the elementwise family. A
    variant that attends twice (differential, ca_bias) calls it twice per forward.
    """

    # -- the variant's declaration: everything the rest of the project knows about it, set
    #    once in its own file. The tests, benchmarks, kernels and compression read these. --
    variant_name = "?"  # set by @register
    family = "softmax"  # the kernels entry point its fast path runs on: softmax | slot | elementwise
    fused_kernel: str | None = None  # its fused Triton kernel, outlier_lab/kernels/triton/<name>.py (params: fused_params)
    # What one row of its probe's ``probs`` (weights on the real keys) sums to:
    #   "one": a distribution; "null_mass": 1 - null_mass, the share given to nothing;
    #   "one_minus_lambda": 1 - probe_out["lambda"] (differential attention).
    probe_rows = "one"
    init_means: dict[str, float] = {}  # probe extra -> its mean at init, where the init is designed
    init_std: dict[str, float] = {}  # parameter -> its std at init (0: all zeros)
    # option sets the tests check: the defaults first; the kernel tests use the last one, so
    # make it the one that reaches the most branches
    test_options: tuple[dict, ...] = ({},)

    def __init__(
        self,
        n_embd: int,
        n_head: int,
        *,
        block_size: int,
        bias: bool = True,
        dropout: float = 0.0,
        layer_idx: int = 0,
        backend: str = "auto",
        qk_norm: bool = False,
    ):
        super().__init__()
        if n_head <= 0 or n_embd <= 0 or n_embd % n_head:
            raise ConfigError(f"n_embd={n_embd} must be a positive multiple of n_head={n_head}")
        if backend not in kernels.BACKENDS:
            raise ConfigError(f"unknown attention backend {backend!r}; choose one of {', '.join(kernels.BACKENDS)}")
        self.n_embd, self.n_head, self.head_dim = n_embd, n_head, n_embd // n_head
        self.block_size, self.layer_idx, self.backend = block_size, layer_idx, backend
        self.dropout = dropout
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=bias)
        self.c_proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.resid_dropout = nn.Dropout(dropout)
        # model.qk_norm (outlier_lab/models/norms.py): RMSNorm of q and of k over each head's d channels
        self.q_norm = norms.qk_norm(self.head_dim) if qk_norm else None
        self.k_norm = norms.qk_norm(self.head_dim) if qk_norm else None
        self.attn_probs, self.attn_out = nn.Identity(), nn.Identity()  # for hooks (class docstring)
        self.expose_probs = False
        self.probe = False
        self.probe_out: dict[str, torch.Tensor] = {}

    @classmethod
    def options(cls) -> dict[str, object]:
        """The variant's own constructor options and their defaults, as its ``__init__`` declares
        them (the parameters after n_embd and n_head; the shared ones are keyword-only): the
        one place they are written. configs/attention/NAME.yaml gets them through the
        ``attention_options`` config group, and the tests hand them to ``reference``."""
        parameters = list(inspect.signature(cls.__init__).parameters.values())[3:]  # self, n_embd, n_head
        return {p.name: p.default for p in parameters
                if p.kind is p.POSITIONAL_OR_KEYWORD and p.default is not p.empty}

    def init_extra_parameters(self) -> None:
        """Initialise variant-specific parameters; called after the GPT's generic init."""

    def reference(self, x: torch.Tensor, rope, **options) -> dict[str, torch.Tensor]:
        """The variant's formula in plain torch on this module's parameters, written from its
        source (``models.attention.reference`` has the shared pieces): ``{"out": the module's
        output, "probs": ..., and every other probe extra}``. ``options`` are the constructor
        options the module was built with, all of them (``options()`` has the defaults): a
        reference declares its options without defaults, so it cannot disagree with them. The tests compare every backend, kernel and probe
        with it, so it never calls ``attend`` or ``kernels``."""
        raise NotImplementedError(
            f"attention variant {self.variant_name!r} declares no reference: write its formula as "
            f"{type(self).__name__}.reference (outlier_lab/models/attention/base.py says how)")

    def block_input_readers(self) -> list[nn.Module]:
        """The modules that read the block input x (the attention-side norm's output). A
        compression protocol that rescales x per channel (smoothing) folds the inverse into
        them: nn.Linear, or modules with ``input_channel_absmax()`` and ``fold_input(shift, scale)``."""
        return [self.c_attn]

    def fused_params(self, t: int) -> dict:
        """The parameters of ``fused_kernel`` for sequences of length t."""
        return {}

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = (t.view(B, T, self.n_head, self.head_dim).transpose(1, 2) for t in self.c_attn(x).split(C, dim=2))
        if self.q_norm is not None:  # before rotary positions, as Qwen3 (outlier_lab/models/norms.py)
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        o, extras = self.attend(q, k, v, x, self.probe)
        if self.probe:
            extras["max_logit"] = kernels.naive.causal_logits(q, k).amax(dim=(-2, -1))  # (B, H)
            extras["values"] = v  # (B, H, T, d), for the value-state drain
            self.probe_out = {name: t.detach() for name, t in extras.items()}
        y = self.attn_out(o).transpose(1, 2).reshape(B, T, C)
        return self.resid_dropout(self.c_proj(y))

    def attend(self, q, k, v, x, probe: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    @property
    def attn_dropout(self) -> float:
        return self.dropout if self.training else 0.0

    @property
    def probs_transform(self):
        """What the kernels apply to the attention weights before P V: ``attn_probs`` when
        ``expose_probs`` (forcing the eager path), else None (any backend)."""
        return self.attn_probs if self.expose_probs else None

    def softmax_attend(self, q, k, v, probe: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """softmax(s) V on the fastest backend, or eager with probabilities when probing."""
        o, p = kernels.softmax_attention(q, k, v, backend=self.backend, dropout_p=self.attn_dropout, return_probs=probe,
                                         probs_transform=self.probs_transform)
        return o, ({"probs": p, "null_mass": p.new_zeros(p.shape[:-1])} if probe else {})

    def slot_attend(self, q, k, v, probe: bool, slot_key=None, slot_bias=None, slot_value=None):
        """Softmax with one extra slot (see kernels.slot_attention). Returns (o, pi, extras);
        pi, the weight on the slot, is the row's null mass."""
        o, pi, p = kernels.slot_attention(
            q, k, v, slot_key=slot_key, slot_bias=slot_bias, slot_value=slot_value, backend=self.backend,
            dropout_p=self.attn_dropout, return_probs=probe, probs_transform=self.probs_transform,
        )
        return o, pi, ({"probs": p, "null_mass": pi} if probe else {})

    def elementwise_attend(self, q, k, v, probe: bool, probs_fn):
        """P V with P = probs_fn(s, mask) (see kernels.elementwise_attention), or the variant's
        fused Triton kernel where the backend chooses it."""
        fused = (self.fused_kernel, self.fused_params(q.size(-2))) if self.fused_kernel else None
        o, p = kernels.elementwise_attention(
            q, k, v, probs_fn, fused=fused, backend=self.backend, dropout_p=self.attn_dropout, return_probs=probe,
            probs_transform=self.probs_transform,
        )
        return o, ({"probs": p, "null_mass": 1 - p.sum(-1)} if probe else {})


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding (rotate-half form) on (B, H, T, d); cos, sin are (T, d)."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


def rope_tables(block_size: int, head_dim: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables (block_size, head_dim) for ``apply_rope``."""
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.outer(torch.arange(block_size, dtype=torch.float64), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().float(), angles.sin().float()
