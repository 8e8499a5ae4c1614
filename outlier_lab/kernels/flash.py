"""flash-attn, when it imports. Any import failure (missing package, CUDA/ABI mismatch,
missing shared library) means "not available", never an error."""

from __future__ import annotations

import torch

try:  # noqa: SIM105 - every kind of failure must fall back
    from flash_attn import flash_attn_func as _flash_attn_func
except Exception:  # pragma: no cover - depends on the machine
    _flash_attn_func = None

FLASH_DTYPES = (torch.float16, torch.bfloat16)


def flash_available() -> bool:
    return _flash_attn_func is not None


def softmax_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0) -> torch.Tensor:
    """Causal softmax attention on (B, H, T, d) tensors; flash-attn wants (B, T, H, d)."""
    o = _flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), dropout_p=dropout_p, causal=True)
    return o.transpose(1, 2)
