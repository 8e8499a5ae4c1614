"""A nanoGPT-style GPT: pre-norm blocks, learned positions, GELU MLP, tied embeddings.
``style="llama"`` swaps in RMSNorm, rotary positions, a SwiGLU MLP and no biases.
``mlp`` picks the MLP apart from the style (``relu``: Guo et al. 2024's 4x ReLU MLP), and
``init.embedding_std`` the std of the token and position embeddings (Guo et al.: N(0, 1),
PyTorch's default; GPT-2: 0.02), and ``tie_embeddings=False`` gives the output head its own
weights (Guo et al.'s; then the head is an ordinary Linear, N(0, 0.02)).
``norm_scale="single"`` gives every norm (ln_1, ln_2, ln_f) one scalar gain instead of a
per-channel one, and ``qk_norm=True`` RMS-normalises each head's q and k (outlier_lab/models/norms.py).

Activations that no module returns are passed through named ``nn.Identity`` modules, so that
a forward hook reaches them without touching the model's code: ``transformer.emb_out`` (the
embedding sum), per block ``resid_attn`` and ``resid_mlp`` (the two residual sums) and
``mlp.act_out`` (the MLP's hidden activation, c_proj's input); the attention adds its own
(outlier_lab/models/attention/base.py). They hold no parameters and change no number; the W8A8 protocol
(outlier_lab/compression/) quantizes there.

Parameter names follow nanoGPT (``transformer.h.{i}.attn.c_attn`` ...), so nanoGPT and
the seed paper's checkpoints load directly (``GPT.from_nanogpt``). Every block takes its
attention module from the registry in ``models.attention`` by name.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

from outlier_lab.models.attention import build_attention, get_attention_class
from outlier_lab.models.attention.base import rope_tables
from outlier_lab.models.norms import build_norm, check_norm_options
from outlier_lab.errors import ConfigError, check_fields, is_number


STYLES = ("gpt2", "llama")
MLPS = {"gelu": nn.GELU, "relu": nn.ReLU, "swiglu": None}  # None: SwiGLU, its own module
STYLE_MLP = {"gpt2": "gelu", "llama": "swiglu"}  # each style's MLP when model.mlp is null


@dataclass(frozen=True)
class InitConfig:
    """``model.init``: the initialisation choices that differ between the sources (GPT-2's
    N(0, 0.02) everywhere; Guo et al.'s PyTorch defaults, N(0, 1) embeddings). Only the
    declared keys: a misspelt one is an error, not GPT-2's default in disguise."""

    embedding_std: float = 0.02  # token and position embeddings (the token one is also the tied head)

    @classmethod
    def from_mapping(cls, init: Mapping | None) -> InitConfig:
        init = dict(init or {})
        check_fields(init, cls, "model.init")
        config = cls(**init)
        if not (is_number(config.embedding_std) and config.embedding_std > 0):
            raise ConfigError(f"model.init.embedding_std={config.embedding_std!r}: give a positive number")
        return config


class MLP(nn.Module):
    """GPT-2's MLP, 4x wide: GELU (GPT-2) or ReLU (Guo et al. 2024's block)."""

    def __init__(self, n_embd: int, bias: bool, dropout: float, activation: str = "gelu"):
        super().__init__()
        self.c_fc = nn.Linear(n_embd, 4 * n_embd, bias=bias)
        self.act = MLPS[activation]()
        self.c_proj = nn.Linear(4 * n_embd, n_embd, bias=bias)  # the "down projection" of the outlier metrics
        self.act_out = nn.Identity()  # the hidden activation, for hooks (module docstring)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.act_out(self.act(self.c_fc(x)))))


class SwiGLU(nn.Module):
    """LLaMA's MLP: down(silu(gate(x)) * up(x)), hidden ~8/3 x wide (a multiple of 64)."""

    def __init__(self, n_embd: int, dropout: float):
        super().__init__()
        hidden = 64 * math.ceil(8 * n_embd / 3 / 64)
        self.c_fc = nn.Linear(n_embd, 2 * hidden, bias=False)  # gate and up, fused
        self.c_proj = nn.Linear(hidden, n_embd, bias=False)
        self.act_out = nn.Identity()  # the hidden activation, for hooks (module docstring)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        gate, up = self.c_fc(x).chunk(2, dim=-1)
        return self.dropout(self.c_proj(self.act_out(F.silu(gate) * up)))


class Block(nn.Module):
    def __init__(self, n_embd: int, n_head: int, block_size: int, bias: bool, dropout: float, layer_idx: int,
                 attention: Mapping, style: str = "gpt2", qk_norm: bool = False, norm_scale: str = "channel",
                 mlp: str = "gelu"):
        super().__init__()
        options = {key: value for key, value in attention.items() if key != "name"}
        self.ln_1 = build_norm(style, n_embd, bias, norm_scale)
        self.attn = build_attention(
            attention["name"], n_embd=n_embd, n_head=n_head, block_size=block_size, bias=bias,
            dropout=dropout, layer_idx=layer_idx, qk_norm=qk_norm, **options,
        )
        self.ln_2 = build_norm(style, n_embd, bias, norm_scale)
        self.mlp = SwiGLU(n_embd, dropout) if mlp == "swiglu" else MLP(n_embd, bias, dropout, mlp)
        self.resid_attn, self.resid_mlp = nn.Identity(), nn.Identity()  # the residual sums, for hooks

    def forward(self, x, rope=None):
        x = self.resid_attn(x + self.attn(self.ln_1(x), rope))
        return self.resid_mlp(x + self.mlp(self.ln_2(x)))


class GPT(nn.Module):
    def __init__(
        self,
        vocab_size: int = 256,
        block_size: int = 256,
        n_layer: int = 4,
        n_head: int = 4,
        n_embd: int = 128,
        dropout: float = 0.0,
        bias: bool = True,
        attention: Mapping | None = None,
        style: str = "gpt2",
        name: str = "custom",
        qk_norm: bool = False,
        norm_scale: str = "channel",
        mlp: str | None = None,
        init: Mapping | None = None,
        tie_embeddings: bool = True,
    ):
        super().__init__()
        attention = dict(attention or {"name": "softmax"})
        _validate(vocab_size=vocab_size, block_size=block_size, n_layer=n_layer, n_head=n_head, n_embd=n_embd)
        if style not in STYLES:
            raise ConfigError(f"unknown model.style {style!r}; choose one of {', '.join(STYLES)}")
        check_norm_options(norm_scale, qk_norm)
        mlp = STYLE_MLP[style] if mlp is None else mlp
        if mlp not in MLPS:
            raise ConfigError(f"unknown model.mlp {mlp!r}; choose one of {', '.join(MLPS)}, or null for the style's")
        init_config = InitConfig.from_mapping(init)
        bias = bias and style == "gpt2"  # LLaMA style has no biases
        if "name" not in attention:
            raise ConfigError("the attention config needs a 'name', e.g. attention=softmax")
        get_attention_class(attention["name"])  # fail early, listing the valid names
        self.config = dict(
            vocab_size=vocab_size, block_size=block_size, n_layer=n_layer, n_head=n_head,
            n_embd=n_embd, dropout=dropout, bias=bias, attention=attention, style=style, name=name,
            qk_norm=qk_norm, norm_scale=norm_scale, mlp=mlp, init=asdict(init_config),
            tie_embeddings=tie_embeddings,
        )
        self.block_size, self.style = block_size, style
        layers = dict(
            wte=nn.Embedding(vocab_size, n_embd),
            emb_out=nn.Identity(),  # the embedding sum, for hooks (module docstring)
            drop=nn.Dropout(dropout),
            h=nn.ModuleList(
                Block(n_embd, n_head, block_size, bias, dropout, i, attention, style, qk_norm, norm_scale, mlp)
                for i in range(n_layer)
            ),
            ln_f=build_norm(style, n_embd, bias, norm_scale),
        )
        if style == "gpt2":
            layers["wpe"] = nn.Embedding(block_size, n_embd)
        else:
            cos, sin = rope_tables(block_size, n_embd // n_head)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.transformer = nn.ModuleDict(layers)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        if tie_embeddings:  # GPT-2's; Guo et al.'s head is its own Linear
            self.transformer.wte.weight = self.lm_head.weight
        embeddings = [module.weight for module in self.transformer.values() if isinstance(module, nn.Embedding)]
        self.apply(lambda module: self._init_weights(module, embeddings, init_config.embedding_std))
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):  # GPT-2's scaled init of residual projections
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))
        for block in self.transformer.h:
            block.attn.init_extra_parameters()

    @staticmethod
    def _init_weights(module: nn.Module, embeddings: list[nn.Parameter], embedding_std: float) -> None:
        # one draw per module, in module order, so that each seed's default init stays as it was;
        # lm_head draws the tied embedding last, so it takes the embedding's std
        if isinstance(module, (nn.Linear, nn.Embedding)):
            std = embedding_std if any(module.weight is w for w in embeddings) else 0.02
            nn.init.normal_(module.weight, mean=0.0, std=std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Token ids (B, T) -> logits (B, T, vocab) at every position."""
        T = idx.size(1)
        if T > self.block_size:
            raise ValueError(f"sequence length {T} exceeds block_size {self.block_size}")
        x = self.transformer.wte(idx)
        rope = None
        if self.style == "gpt2":
            x = x + self.transformer.wpe(torch.arange(T, device=idx.device))
        else:
            rope = (self.rope_cos[:T].to(x.dtype), self.rope_sin[:T].to(x.dtype))
        x = self.transformer.drop(self.transformer.emb_out(x))
        for block in self.transformer.h:
            x = block(x, rope)
        return self.lm_head(self.transformer.ln_f(x))

    def loss(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = self(idx)
        return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @classmethod
    def from_nanogpt(
        cls, state_dict: Mapping[str, torch.Tensor], n_head: int, attention: str | Mapping = "softmax",
        dropout: float = 0.0, qk_norm: bool = False, norm_scale: str = "channel",
    ) -> GPT:
        """Build a GPT from a nanoGPT-format state dict, inferring every size but ``n_head``.

        Accepts the seed paper's variant keys (``.attn.context_scale.0.*``, ``.attn.v_bias``,
        ``.attn.k_bias``) and strips the ``_orig_mod.`` prefix left by ``torch.compile``.
        nanoGPT's causal-mask buffer (``.attn.bias``, 4-D) is ignored. nanoGPT has per-channel
        norms and no q/k norm: ``qk_norm=True`` or ``norm_scale="single"``, asked for or found
        in the state dict, is a ConfigError (train.py checkpoints record both options).
        """
        sd = {k.removeprefix("_orig_mod."): v for k, v in state_dict.items()}
        ln = sd.get("transformer.h.0.ln_1.weight")
        single = ln is not None and ln.numel() == 1
        if qk_norm or norm_scale != "channel" or single or any(".q_norm." in k for k in sd):
            raise ConfigError("a nanoGPT checkpoint has per-channel norms and no q/k norm: model.qk_norm=true "
                              "and model.norm_scale=single cannot be loaded from one (load the train.py checkpoint)")
        sd = {k: v for k, v in sd.items() if not (k.endswith(".attn.bias") and v.dim() == 4)}
        for key in ("transformer.wte.weight", "transformer.wpe.weight", "transformer.h.0.attn.c_attn.weight"):
            if key not in sd:
                raise ConfigError(f"not a nanoGPT state dict: missing {key!r}")
        vocab_size, n_embd = sd["transformer.wte.weight"].shape
        layers = {int(m.group(1)) for k in sd if (m := re.match(r"transformer\.h\.(\d+)\.", k))}
        model = cls(
            vocab_size=vocab_size,
            block_size=sd["transformer.wpe.weight"].shape[0],
            n_layer=max(layers) + 1,
            n_head=n_head,
            n_embd=n_embd,
            dropout=dropout,
            bias="transformer.h.0.ln_1.bias" in sd,
            attention={"name": attention} if isinstance(attention, str) else attention,
        )
        if "lm_head.weight" not in sd:
            sd["lm_head.weight"] = sd["transformer.wte.weight"]
        missing, unexpected = model.load_state_dict(sd, strict=False)
        if missing or unexpected:
            raise ConfigError(
                f"state dict does not match a {model.config['attention']['name']} GPT with n_head={n_head}: "
                f"missing {sorted(missing)[:6]}, unexpected {sorted(unexpected)[:6]}"
            )
        return model


def _validate(**sizes: int) -> None:
    for name, value in sizes.items():
        if not isinstance(value, int) or value <= 0:
            raise ConfigError(f"model.{name} must be a positive integer, got {value!r}")
    n_embd, n_head = sizes["n_embd"], sizes["n_head"]
    if n_embd % n_head:
        divisors = [h for h in range(1, min(n_embd, 64) + 1) if n_embd % h == 0]
        raise ConfigError(f"model.n_head={n_head} does not divide model.n_embd={n_embd}; valid n_head: {divisors}")
