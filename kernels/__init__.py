"""Backend choice for attention. Variants call these functions and never pick a backend
themselves, so a new fast path lands here once and every variant gets it.

Backends for causal softmax attention:
- ``flash``: flash-attn, when it imports, the tensors are on CUDA and the dtype is fp16/bf16;
- ``sdpa``: ``torch.nn.functional.scaled_dot_product_attention`` (any device);
- ``eager``: plain PyTorch (``kernels.naive``), the only one that returns probabilities.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels import flash, naive
from models.errors import ConfigError

BACKENDS = ("auto", "flash", "sdpa", "eager")


def select_backend(requested: str, device_type: str, dtype: torch.dtype, need_probs: bool = False) -> str:
    """The backend that will run: ``requested`` if usable, else the fastest that is."""
    if requested not in BACKENDS:
        raise ConfigError(f"unknown attention backend {requested!r}; choose one of {', '.join(BACKENDS)}")
    if need_probs:
        return "eager"
    if requested == "flash":
        missing = _flash_missing(device_type, dtype)
        if missing:
            raise ConfigError(f"attention.backend=flash is unavailable: {missing}")
        return "flash"
    if requested != "auto":
        return requested
    return "flash" if not _flash_missing(device_type, dtype) else "sdpa"


def _flash_missing(device_type: str, dtype: torch.dtype) -> str:
    if not flash.flash_available():
        return "flash-attn is not installed or failed to import (pip install '.[gpu]')"
    if device_type != "cuda":
        return f"flash-attn needs CUDA tensors, got {device_type}"
    if dtype not in flash.FLASH_DTYPES:
        return f"flash-attn needs float16 or bfloat16, got {dtype}"
    return ""


def softmax_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    backend: str = "auto",
    dropout_p: float = 0.0,
    return_probs: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Causal softmax(q k^T / sqrt(d)) v on (B, H, T, d). Returns (o, p); p is None unless asked for."""
    chosen = select_backend(backend, q.device.type, q.dtype, need_probs=return_probs)
    if chosen == "eager":
        o, p = naive.softmax_attention(q, k, v, dropout_p)
        return o, (p if return_probs else None)
    if chosen == "flash":
        return flash.softmax_attention(q, k, v, dropout_p), None
    return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True), None
