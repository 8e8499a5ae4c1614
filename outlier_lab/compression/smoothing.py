"""Channel-wise shift and scale of the norm outputs, migrated into the modules that read them
(Wei et al. 2023, OS+: the shift; Xiao et al. 2023, SmoothQuant: the scale).

In each block, ln_1's output (the block input x) is read by the modules that the attention
variant declares in ``attn.block_input_readers()``, and ln_2's by ``mlp.c_fc`` (GELU MLP
and SwiGLU alike). A reader is an nn.Linear, or a module with ``input_channel_absmax()``
((C,): max over outputs of |W[:, c]|) and ``fold_input(shift, scale)`` (in place: the same
outputs for x' with x = scale * x' + shift). Smoothing never reads a variant's parameters
itself; a calibration pass checks that every nn.Linear reading a norm's output is declared.

The scale s is folded into the norm's per-channel gain. A single-scale norm
(``model.norm_scale=single``, outlier_lab/models/norms.py) has one scalar gain, into which no per-channel
factor folds; and the readers cannot absorb it, since s must divide the quantized tensor
itself. So the working copy first replaces each single-scale ln_1 / ln_2 by the per-channel
norm that computes the same function (the scalar in every channel: exact, and what an
inference engine that only has per-channel norms would load), and folds into that. The
smoothed copy thus has per-channel norms; the model it came from is untouched.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from outlier_lab.models.norms import SingleScaleNorm
from outlier_lab.compression.observers import observe_channel_ranges
from outlier_lab.compression.passes import linears, token_ids, working_copy


def _per_channel_norms(model: nn.Module) -> None:
    """In place: each block's single-scale ln_1 and ln_2 replaced by its per-channel equal."""
    for block in model.transformer.h:
        for name in ("ln_1", "ln_2"):
            if isinstance(getattr(block, name), SingleScaleNorm):
                setattr(block, name, getattr(block, name).per_channel())


def _norm_readers(model: nn.Module) -> dict[nn.Module, list[nn.Module]]:
    """Each block's ln_1 and ln_2 with the modules that read its output."""
    readers = {}
    for block in model.transformer.h:
        readers[block.ln_1] = list(block.attn.block_input_readers())
        readers[block.ln_2] = [block.mlp.c_fc]
    for norm_readers in readers.values():
        for reader in norm_readers:
            if not (isinstance(reader, nn.Linear) or
                    (hasattr(reader, "input_channel_absmax") and hasattr(reader, "fold_input"))):
                raise TypeError(f"{type(reader).__name__} is declared as a reader of a norm output but is "
                                "neither an nn.Linear nor has input_channel_absmax() and fold_input(shift, scale)")
    return readers


def _check_readers_hooks(model: nn.Module, readers: dict[nn.Module, list[nn.Module]]) -> list:
    """Hooks that raise, during a forward pass, when an nn.Linear reads a norm's output
    (the same tensor) without being among that norm's declared readers."""
    names = {module: name for name, module in model.named_modules()}
    outputs: dict[nn.Module, torch.Tensor] = {}

    def on_norm(norm, _args, out):
        outputs[norm] = out

    def on_linear(linear, args):
        for norm, out in outputs.items():
            if args[0] is out and linear not in readers[norm]:
                declared = ", ".join(names[r] for r in readers[norm])
                raise RuntimeError(
                    f"{names[linear]} (nn.Linear) reads the output of {names[norm]}, but smoothing only folds "
                    f"into the declared readers ({declared}): list it in the attention variant's "
                    "block_input_readers() (outlier_lab/models/attention/base.py), or smoothing would be silently wrong")

    return ([norm.register_forward_hook(on_norm) for norm in readers] +
            [linear.register_forward_pre_hook(on_linear) for _, linear in linears(model)])


def _channel_absmax(reader: nn.Module) -> torch.Tensor:
    """max over outputs of |W[:, c]| for every input channel c, in float32: (C,)."""
    return reader.weight.abs().float().amax(0) if isinstance(reader, nn.Linear) else reader.input_channel_absmax()


def _fold_shift_scale(norm: nn.Module, readers: list[nn.Module], lo: torch.Tensor, hi: torch.Tensor,
                      alpha: float) -> None:
    """In place: x' = (x - z) / s at the norm's output, compensated in every reader.

    z = (max + min) / 2 per channel if the norm and all readers have biases, else 0 (OS+);
    s_c = max|x_c - z_c|^alpha / max_i |W_ic|^(1 - alpha), clamped to >= 1e-5 (SmoothQuant),
    the weight max taken over all readers. Norm: gamma' = gamma / s, beta' = (beta - z) / s.
    Linear reader: W' = W diag(s), b' = b + W z; other readers: ``fold_input(z, s)``.
    """
    has_bias = getattr(norm, "bias", None) is not None and all(getattr(r, "bias", None) is not None for r in readers)
    z = (hi + lo) / 2 if has_bias else torch.zeros_like(lo)
    act_max = torch.maximum(hi - z, z - lo)
    w_max = torch.stack([_channel_absmax(r) for r in readers]).amax(0)
    s = (act_max.clamp(min=1e-5).pow(alpha) / w_max.clamp(min=1e-5).pow(1 - alpha)).clamp(min=1e-5)
    for r in readers:
        if not isinstance(r, nn.Linear):
            r.fold_input(z, s)
            continue
        if has_bias:
            r.bias.add_((r.weight.float() @ z).to(r.bias.dtype))
        r.weight.mul_(s.to(r.weight.dtype))
    dtype = norm.weight.dtype
    if getattr(norm, "bias", None) is not None:
        norm.bias.copy_(((norm.bias.float() - z) / s).to(dtype))
    norm.weight.copy_((norm.weight.float() / s).to(dtype))


def smooth_shift_scale(model: nn.Module, batches: Iterable, alpha: float = 0.5) -> nn.Module:
    """A copy with channel-wise shift and scale of each block's ln_1 and ln_2 output migrated
    into their readers (see the module docstring; ``_fold_shift_scale`` has the definitions),
    calibrated on the per-channel min and max of the norm outputs over the token batches.
    The transform is exact in real arithmetic: the fp32 copy gives the original logits (to
    rounding); only the ranges that a later quantizer sees change. The norm's affine weight
    is required (LayerNorm or RMSNorm with elementwise_affine); single-scale norms become their
    per-channel equals first (module docstring)."""
    smoothed = working_copy(model)
    _per_channel_norms(smoothed)
    readers = _norm_readers(smoothed)
    checks = _check_readers_hooks(smoothed, readers)
    try:
        ranges = observe_channel_ranges(smoothed, token_ids(batches), readers)
    finally:
        for hook in checks:
            hook.remove()
    with torch.no_grad():
        for norm, (lo, hi) in ranges.items():
            _fold_shift_scale(norm, readers[norm], lo, hi, alpha)
    return smoothed
