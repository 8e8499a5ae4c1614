"""Fused causal Triton kernels, forward and backward, for the elementwise variants whose
weights are not a plain softmax (one file each, like flash-linear-attention's fla/ops/):

- ``softpick``: p_ij = relu(e^{s_ij} - 1) / (sum_{j<=i} |e^{s_ij} - 1| + eps)
- ``sigmoid``: p_ij = sigmoid(s_ij + b)
- ``clipped_softmax``: p = clip((zeta - gamma) softmax(s) + gamma, 0, 1)

Each works online over key blocks and keeps O(T) memory per head (the (T, T) weights are
never stored). The references are the variants' own dense formulas in outlier_lab/models/attention/,
run by kernels.naive.elementwise_attention; tests/test_kernels_triton.py compares them.
A new kernel is a file ``<name>.py`` here defining ``<name>_attention(q, k, v, **params)``.

triton is optional: ``import kernels`` works without it. The kernel modules are imported
on first use, not here, because ``triton.jit`` decides at import time whether a kernel is
compiled or interpreted (TRITON_INTERPRET=1 runs them on CPU, as the tests do).
"""

from __future__ import annotations

import functools
import importlib
import os
import pkgutil

# kernel name -> the function ``<name>_attention`` of the module <name>.py beside this file.
# Found from the file names, without importing them (see above); a variant names its
# kernel in its declaration (``fused_kernel``), and the tests check the two sides agree.
KERNELS = {
    module.name: f"{module.name}_attention"
    for module in pkgutil.iter_modules(__path__) if not module.name.startswith("_")
}


@functools.cache
def import_error() -> str:
    """Why triton cannot be used here ('' when it can). Any failure counts, as for flash-attn."""
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception as err:  # noqa: BLE001 - broken installs raise all kinds of errors
        return f"{type(err).__name__}: {err}"
    return ""


def triton_available() -> bool:
    return not import_error()


def interpreting() -> bool:
    """TRITON_INTERPRET is on, read the way triton reads it: kernels imported now run as
    numpy code on CPU instead of being compiled for the GPU."""
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in ("1", "true", "yes", "on")


def fused_attention(name: str, q, k, v, **params):
    """Run the fused kernel of variant ``name`` (a key of KERNELS) on (B, H, T, d) tensors."""
    if name not in KERNELS:
        raise KeyError(f"no fused triton kernel named {name!r}; there are {', '.join(KERNELS)}")
    if not triton_available():
        raise ImportError(f"triton is not importable ({import_error()})")
    module = importlib.import_module(f"{__name__}.{name}")
    return getattr(module, KERNELS[name])(q, k, v, **params)


def __getattr__(attr: str):
    """``kernels.triton.softpick_attention`` etc., importable only where triton is."""
    for name, function in KERNELS.items():
        if attr == function and triton_available():
            return getattr(importlib.import_module(f"{__name__}.{name}"), function)
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")
