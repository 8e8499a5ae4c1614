"""GPT-2 weights between transformers' layout and nanoGPT's (this project's GPT): the two
differ only in GPT-2's Conv1D projections, stored (in, out) where nn.Linear is (out, in),
and in transformers' causal-mask buffers. The GELU differs too: GPT-2 uses the tanh
approximation ("gelu_new"), our GPT the exact one, so a converted model equals the original
only when the transformers config says ``activation_function="gelu"``."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from outlier_lab.errors import ConfigError
from outlier_lab.models.gpt import GPT

CONV1D = (".attn.c_attn.weight", ".attn.c_proj.weight", ".mlp.c_fc.weight", ".mlp.c_proj.weight")


def hf_gpt2_to_nanogpt(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A GPT2LMHeadModel state dict in nanoGPT's layout (``GPT.from_nanogpt`` loads it)."""
    if "transformer.wte.weight" not in state_dict:
        raise ConfigError("not a GPT-2 state dict: missing 'transformer.wte.weight'")
    out = {}
    for key, value in state_dict.items():
        if key.endswith((".attn.bias", ".attn.masked_bias")):  # causal-mask buffers, not weights
            continue
        out[key] = value.t().contiguous() if key.endswith(CONV1D) else value
    return out


def gpt_to_hf_gpt2(model: GPT):
    """Our GPT (``style=gpt2``, softmax attention) as a transformers GPT2LMHeadModel with the
    same function (exact GELU): for analysing a trained model through the Hugging Face path."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = model.config
    if config["style"] != "gpt2" or config["attention"]["name"] != "softmax" or config["qk_norm"] \
            or config["norm_scale"] != "channel" or not config["bias"] or config.get("mlp", "gelu") not in ("gelu", "relu") \
            or not config.get("tie_embeddings", True):  # transformers' GPT-2 ties its head to wte
        raise ConfigError("only a GPT-2-style softmax GPT with biases, per-channel norms and a tied head converts to "
                          f"transformers' GPT-2 (this one: style={config['style']}, "
                          f"attention={config['attention']['name']}, bias={config['bias']})")
    hf_config = GPT2Config(vocab_size=config["vocab_size"], n_positions=config["block_size"], n_embd=config["n_embd"],
                           n_layer=config["n_layer"], n_head=config["n_head"],
                           activation_function=config.get("mlp", "gelu"),
                           resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, layer_norm_epsilon=1e-5,
                           bos_token_id=None, eos_token_id=None)
    hf = GPT2LMHeadModel(hf_config)
    state = {key: value.t().contiguous() if key.endswith(CONV1D) else value
             for key, value in model.state_dict().items()}
    missing, unexpected = hf.load_state_dict(state, strict=False)
    missing = [key for key in missing if not key.endswith((".attn.bias", ".attn.masked_bias"))]
    if missing or unexpected:
        raise ConfigError(f"GPT does not map onto GPT-2: missing {missing[:6]}, unexpected {unexpected[:6]}")
    return hf.eval()


def export(checkpoint: str | Path, directory: str | Path) -> Path:
    """A train.py / nanoGPT checkpoint of a softmax GPT-2-style GPT, saved as a transformers
    GPT-2 model directory (safetensors): ``analyze.py model=hf:DIR`` reads it like any hub model."""
    from outlier_lab.models.checkpoint import load_model

    model, _ = load_model(checkpoint)
    gpt_to_hf_gpt2(model).save_pretrained(directory)
    return Path(directory)


if __name__ == "__main__":
    import argparse

    from rich.console import Console

    from outlier_lab.errors import exit_on_config_error

    parser = argparse.ArgumentParser(description="Save a softmax GPT checkpoint as a transformers GPT-2 directory.")
    parser.add_argument("checkpoint", help="a train.py checkpoint (last.ckpt) or a nanoGPT ckpt.pt")
    parser.add_argument("directory", help="where to write config.json and model.safetensors")
    args = parser.parse_args()
    console = Console()
    with exit_on_config_error(console):
        console.print(f"Saved {export(args.checkpoint, args.directory)}")
