"""Backend choice for attention. Variants call these functions and never pick a backend
themselves, so a new fast path lands here once and every variant gets it.

Three families, by what the variant needs from the logits:
- ``softmax``: softmax(s) V. Backends: flash-attn (CUDA, fp16/bf16), SDPA, eager.
- ``slot``: softmax over the keys plus one extra slot (softmax1, sink, attn_bias, ca_bias).
  Backends: FlexAttention (CUDA), SDPA with an augmented key (outlier_lab/kernels/slot.py), eager.
  No Triton kernel of ours: the slot becomes a real key of an ordinary softmax attention,
  so the ordinary Flex/SDPA backward is exact and no gradient through a log-sum-exp is
  needed (docs/attention.md, "Backends").
- ``elementwise``: any P = f(s) (sigmoid, softpick, clipped softmax, relu). Backends: triton
  (fused kernels in outlier_lab/kernels/triton/, CUDA; the variant names its kernel with ``fused``),
  eager. Eager without probabilities runs in causal query chunks (outlier_lab/kernels/chunked.py),
  which skip most of the masked upper triangle; with them, the reference.

``auto`` picks the fastest usable backend: flash-attn, FlexAttention and triton only for
CUDA tensors, and triton only when it imports and the variant offers a fused kernel; on
CPU auto stays on SDPA or eager (the Triton interpreter is for tests). Forcing a backend
that cannot run here is a ConfigError that says what is missing; a forced ``triton`` runs
on CPU only under TRITON_INTERPRET=1. The triton kernels have no attention dropout: with
dropout > 0, auto falls back to eager and a forced triton is a ConfigError.

``eager`` (outlier_lab/kernels/naive.py) is the reference every other path is tested against, and the
only one that returns probabilities, so probes always run it. It is also the only one that
can change them: ``probs_transform`` (a callable on the attention weights, applied before
they multiply V; the W8A8 protocol's quantizer) forces eager like ``return_probs``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from outlier_lab.kernels import chunked, flash, naive, slot
from outlier_lab.kernels import triton as triton_kernels
from outlier_lab.errors import ConfigError

BACKENDS = ("auto", "flash", "flex", "sdpa", "triton", "eager")
SUPPORTED = {
    "softmax": ("flash", "sdpa", "eager"),
    "slot": ("flex", "sdpa", "eager"),
    "elementwise": ("triton", "eager"),
}
TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def select_backend(
    requested: str,
    device_type: str,
    dtype: torch.dtype,
    need_probs: bool = False,
    family: str = "softmax",
    fused: bool = False,
) -> str:
    """The backend that will run: ``requested`` if usable, else the fastest that is.
    ``fused``: the variant offers a fused triton kernel (elementwise family)."""
    if requested not in BACKENDS:
        raise ConfigError(f"unknown attention backend {requested!r}; choose one of {', '.join(BACKENDS)}")
    supported = SUPPORTED[family]
    if requested not in ("auto", *supported):
        raise ConfigError(
            f"attention.backend={requested} cannot run {family} attention; choose one of auto, {', '.join(supported)}"
        )
    if need_probs:
        return "eager"
    if requested in ("flash", "flex", "triton"):
        missing = _missing(requested, device_type, dtype, fused, forced=True)
        if missing:
            raise ConfigError(f"attention.backend={requested} is unavailable: {missing}")
        return requested
    if requested != "auto":
        return requested
    return next(b for b in supported if b in ("sdpa", "eager") or not _missing(b, device_type, dtype, fused))


def _missing(backend: str, device_type: str, dtype: torch.dtype, fused: bool = False, forced: bool = False) -> str:
    """Why ``backend`` cannot run here ('' when it can)."""
    if backend == "triton":
        return _missing_triton(device_type, dtype, fused, interpreter_ok=forced)
    if device_type != "cuda":
        return f"{backend} needs CUDA tensors, got {device_type}"
    if backend == "flex":
        return "" if _has_flex() else "this torch has no FlexAttention"
    if not flash.flash_available():
        return "flash-attn is not installed or failed to import (pip install '.[gpu]')"
    if dtype not in flash.FLASH_DTYPES:
        return f"flash-attn needs float16 or bfloat16, got {dtype}"
    return ""


def _missing_triton(device_type: str, dtype: torch.dtype, fused: bool, interpreter_ok: bool) -> str:
    if not fused:
        return "this variant has no fused triton kernel (use eager)"
    if not triton_kernels.triton_available():
        return f"triton is not installed or failed to import ({triton_kernels.import_error()}; pip install '.[triton]')"
    if dtype not in TRITON_DTYPES:
        return f"the triton kernels take float16, bfloat16 or float32, got {dtype}"
    if device_type != "cuda" and not (interpreter_ok and triton_kernels.interpreting()):
        return (f"triton needs CUDA tensors, got {device_type} "
                "(set TRITON_INTERPRET=1 to run the interpreter on CPU)")
    return ""


def _has_flex() -> bool:
    try:
        import torch.nn.attention.flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


def softmax_attention(q, k, v, *, backend="auto", dropout_p=0.0, return_probs=False, probs_transform=None):
    """Causal softmax(q k^T / sqrt(d)) v on (B, H, T, d). Returns (o, p); p is None unless asked for."""
    need_probs = return_probs or probs_transform is not None
    chosen = select_backend(backend, q.device.type, q.dtype, need_probs=need_probs)
    if chosen == "flash" and v.size(-1) != q.size(-1):
        chosen = "sdpa"  # flash-attn wants one head size for q, k and v
    if chosen == "eager":
        return naive.softmax_attention(q, k, v, dropout_p, probs_transform)
    if chosen == "flash":
        return flash.softmax_attention(q, k, v, dropout_p), None
    return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True), None


def slot_attention(q, k, v, *, slot_key=None, slot_bias=None, slot_value=None, backend="auto", dropout_p=0.0,
                   return_probs=False, probs_transform=None):
    """Softmax over the causal keys and one extra slot with logit q.slot_key/sqrt(d) + slot_bias
    (slot_key (1, H, 1, d), slot_bias (1, H, 1, 1); None = 0) and value slot_value (1, H, 1, d; None = 0).
    Returns (o, pi, p): o = sum_j p_ij v_j + pi_i v', pi the slot weight (B, H, T), p None unless asked for."""
    need_probs = return_probs or probs_transform is not None
    chosen = select_backend(backend, q.device.type, q.dtype, need_probs=need_probs, family="slot")
    if chosen == "eager":
        d = q.size(-1)
        logit = q.new_zeros(1, q.size(1), 1, 1) if slot_key is None else (q @ slot_key.transpose(-1, -2)) / d**0.5
        if slot_bias is not None:
            logit = logit + slot_bias
        return naive.slot_attention(q, k, v, logit, slot_value, dropout_p, probs_transform)
    if chosen == "flex":
        o, pi = slot.flex_slot_attention(q, k, v, slot_key, slot_bias, slot_value)
    else:
        o, pi = slot.sdpa_slot_attention(q, k, v, slot_key, slot_bias, slot_value, dropout_p)
    return o, pi, None


def elementwise_attention(q, k, v, probs_fn, *, fused=None, backend="auto", dropout_p=0.0, return_probs=False,
                          probs_transform=None):
    """o = P V with P = probs_fn(s, mask) (see kernels.naive.elementwise_attention). Returns (o, P or None).

    ``fused`` names the variant's fused triton kernel and its parameters, e.g.
    ``("softpick", {"eps": 1e-6})`` (kernels.triton.KERNELS); None = the variant has none.
    The kernels have no dropout: with dropout_p > 0, auto runs eager and a forced triton
    raises ConfigError."""
    need_probs = return_probs or probs_transform is not None
    chosen = select_backend(
        backend, q.device.type, q.dtype, need_probs=need_probs, family="elementwise", fused=fused is not None
    )
    if chosen == "triton" and dropout_p > 0:
        if backend == "triton":
            raise ConfigError(
                f"attention.backend=triton has no attention dropout (dropout={dropout_p}); use eager or dropout 0"
            )
        chosen = "eager"
    if chosen == "triton":
        name, params = fused
        return triton_kernels.fused_attention(name, q, k, v, **params), None
    if not need_probs:
        return chunked.elementwise_attention(q, k, v, probs_fn, dropout_p), None
    o, p = naive.elementwise_attention(q, k, v, probs_fn, dropout_p, probs_transform)
    return o, (p if return_probs else None)
