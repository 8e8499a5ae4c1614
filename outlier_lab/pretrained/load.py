"""Loading a Hugging Face causal LM for analysis: a local directory (``save_pretrained``'s
output) or, with a network, a hub name. Nothing is fetched for a local directory, the
family is checked from the config before any weight is read, and weights load from
safetensors, or from ``.bin`` files with ``weights_only`` (transformers' own rule)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from outlier_lab.errors import ConfigError
from outlier_lab.probe.families import family_of

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEFAULT_WINDOW = 256  # tokens per window when none is given: a hub model's context is 2-32k


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())[:200]


def load_hf(name: str, dtype: str = "auto", device: str = "auto"):
    """(model in eval mode, its tokenizer or None, its Family) for a local directory or a
    hub name; ``dtype``: auto (the checkpoint's own, float32 if it names none) or one of DTYPES;
    ``device``: auto (CUDA when there is one), cpu or cuda. The weights are read in that
    dtype straight onto that device (``device_map``), so the peak is the weights' size."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if dtype != "auto" and dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; choose auto, {', '.join(DTYPES)}")
    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"unknown device {device!r}; choose auto, cpu, cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda, but this machine has no CUDA device; use device=cpu")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    local = Path(name).expanduser().is_dir()
    source = str(Path(name).expanduser()) if local else name
    try:
        config = AutoConfig.from_pretrained(source, local_files_only=local)
    except (OSError, ValueError) as e:
        if local:
            raise ConfigError(f"{source} is not a transformers model directory ({_one_line(e)})") from None
        offline = "" if not os.environ.get("HF_HUB_OFFLINE") else " (HF_HUB_OFFLINE is set)"
        raise ConfigError(f"model {name!r} is not a local directory and could not be fetched from the Hugging Face "
                          f"Hub{offline}: without a network, give a directory saved with save_pretrained, "
                          f"model=hf:/path/to/model") from None
    family = family_of(config.model_type)
    torch_dtype = DTYPES.get(dtype) or _checkpoint_dtype(config)
    try:  # built on the meta device, each tensor read in its dtype straight onto ``device``: no float32 copy
        model = AutoModelForCausalLM.from_pretrained(source, local_files_only=local, dtype=torch_dtype,
                                                     attn_implementation="eager", device_map=device)
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot load the weights of {name!r}: {_one_line(e)}") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local)
    except (OSError, ValueError, TypeError):
        tokenizer = None  # a directory without tokenizer files: analyze.py asks for tokenizer=
    return model.eval(), tokenizer, family


def _checkpoint_dtype(config) -> torch.dtype:
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(dtype, str):
        dtype = DTYPES.get(dtype)
    return dtype if isinstance(dtype, torch.dtype) else torch.float32


def text_windows(ids: list[int] | torch.Tensor, window: int, windows: int, bos: int | None, source: str) -> torch.Tensor:
    """(count, window) consecutive, non-overlapping windows of the token ids of a text, each
    starting with ``bos`` when the tokenizer puts one before a text (LLaMA's does, GPT-2's
    not), so that every window starts the way the model saw sequences start in training."""
    if window < 2:
        raise ConfigError(f"window={window}: a window needs at least 2 tokens")
    ids = torch.as_tensor(ids, dtype=torch.long)
    per = window - (bos is not None)
    count = min(windows, len(ids) // per)
    if count < 1:
        raise ConfigError(f"{source} has {len(ids)} tokens, fewer than one window of {per}; "
                          "use a longer text or a smaller window=")
    rows = ids[: count * per].view(count, per)
    if bos is not None:
        rows = torch.cat([torch.full((count, 1), bos), rows], dim=1)
    return rows


def context_length(model) -> int | None:
    config = model.config
    for key in ("max_position_embeddings", "n_positions"):
        if getattr(config, key, None):
            return int(getattr(config, key))
    return None


def leading_bos(tokenizer) -> int | None:
    """The id the tokenizer puts before a text, or None (GPT-2 puts none)."""
    if tokenizer is None or tokenizer.bos_token_id is None:
        return None
    ids = tokenizer("a")["input_ids"]
    return tokenizer.bos_token_id if ids and ids[0] == tokenizer.bos_token_id else None


def logits_of(model, ids: torch.Tensor) -> torch.Tensor:
    """Next-token logits of a transformers causal LM (B, T, vocab)."""
    return model(input_ids=ids.to(next(model.parameters()).device), use_cache=False).logits

