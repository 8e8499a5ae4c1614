"""Where the outlier probe points are in each model family: one ``Family`` per architecture,
declared once here, read by the probe (``pretrained.probe``) and the interventions. The
metrics code never sees a family: it reads the tensors the probe captured.

Module names are relative: ``layers`` from the model's root, the others from one decoder
layer, ``final_norm`` from the root again. ``OURS`` describes this project's GPT in the
same terms, so the interventions treat both alike."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from outlier_lab.errors import ConfigError


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]  # transformers' config.model_type values it covers
    layers: str         # the ModuleList of decoder layers
    ln_1: str           # the norm before attention
    attn: str           # the attention module (transformers calls the attention interface from it)
    attn_out: str       # the attention's output projection
    ln_2: str           # the norm before the FFN
    down: str           # the FFN down projection: its input is the "down-projection input"
    final_norm: str     # the norm before the LM head ("" where the model has none)

    def blocks(self, model: nn.Module) -> list[nn.Module]:
        return list(model.get_submodule(self.layers))

    def watched(self, model: nn.Module) -> dict[str, nn.Module]:
        """Bondarenko et al.'s tensor set under this project's names (h.<l>.ln_1, h.<l>.attn.c_proj,
        h.<l>.ln_2, h.<l>.mlp.c_proj, h.<l>, ln_f), so per-tensor keys match our GPT's."""
        out = {}
        for layer, block in enumerate(self.blocks(model)):
            out.update({f"h.{layer}.ln_1": block.get_submodule(self.ln_1),
                        f"h.{layer}.attn.c_proj": block.get_submodule(self.attn_out),
                        f"h.{layer}.ln_2": block.get_submodule(self.ln_2),
                        f"h.{layer}.mlp.c_proj": block.get_submodule(self.down), f"h.{layer}": block})
        if self.final_norm and (final := _optional(model, self.final_norm)) is not None:
            out["ln_f"] = final
        return out

    def attentions(self, model: nn.Module) -> list[nn.Module]:
        return [block.get_submodule(self.attn) for block in self.blocks(model)]

    def down_projections(self, model: nn.Module) -> list[nn.Module]:
        return [block.get_submodule(self.down) for block in self.blocks(model)]

    def down_weights(self, model: nn.Module) -> list[torch.Tensor]:
        return [projection_weight(m) for m in self.down_projections(model)]


def projection_weight(module: nn.Module) -> torch.Tensor:
    """A projection's weight as (out, in): GPT-2 stores its projections as transformers'
    Conv1D, weight (in, out)."""
    return module.weight.t() if type(module).__name__ == "Conv1D" else module.weight


def linear_weights(model: nn.Module) -> list[torch.Tensor]:
    """Every projection's (out, in) weight: nn.Linear, and GPT-2's Conv1D."""
    return [projection_weight(m) for m in model.modules() if isinstance(m, nn.Linear) or type(m).__name__ == "Conv1D"]


def _optional(model: nn.Module, name: str) -> nn.Module | None:
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


GPT2 = Family("gpt2", ("gpt2",), layers="transformer.h", ln_1="ln_1", attn="attn", attn_out="attn.c_proj",
              ln_2="ln_2", down="mlp.c_proj", final_norm="transformer.ln_f")
FAMILIES = (
    GPT2,
    Family("llama", ("llama", "mistral", "qwen2", "qwen3"), layers="model.layers", ln_1="input_layernorm",
           attn="self_attn", attn_out="self_attn.o_proj", ln_2="post_attention_layernorm", down="mlp.down_proj",
           final_norm="model.norm"),
    Family("opt", ("opt",), layers="model.decoder.layers", ln_1="self_attn_layer_norm", attn="self_attn",
           attn_out="self_attn.out_proj", ln_2="final_layer_norm", down="fc2",
           final_norm="model.decoder.final_layer_norm"),
    Family("gpt_neox", ("gpt_neox",), layers="gpt_neox.layers", ln_1="input_layernorm", attn="attention",
           attn_out="attention.dense", ln_2="post_attention_layernorm", down="mlp.dense_4h_to_h",
           final_norm="gpt_neox.final_layer_norm"),
)
# this project's GPT (outlier_lab/models/gpt.py): nanoGPT's module names, which are GPT-2's
OURS = replace(GPT2, name="outlier-lab", model_types=())


def supported_model_types() -> list[str]:
    return sorted(t for family in FAMILIES for t in family.model_types)


def family_of(model_type: str) -> Family:
    """The family of a transformers ``config.model_type``; any other is a ConfigError."""
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    raise ConfigError(f"unsupported model family {model_type!r}; supported: {', '.join(supported_model_types())} "
                      "(add a Family in outlier_lab/probe/families.py)")
