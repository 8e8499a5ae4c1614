"""Activation compression on a working copy: forward pre-hooks that fake-quantize or clip the
input of each nn.Linear."""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from outlier_lab.compression.observers import calibrate_abs_percentiles
from outlier_lab.compression.passes import HEAD, linears, replace_input, working_copy
from outlier_lab.compression.quantizers import quantize_asymmetric


def attach_input_quantizers(model: nn.Module, ranges: dict[str, tuple[float, float]], bits: int,
                            skip_head: bool) -> nn.Module:
    """In place: pre-hooks fake-quantizing each calibrated Linear's input asymmetrically per
    tensor with its static range (``calibrate_input_ranges``; Bondarenko's activation
    quantizer). ``skip_head`` leaves the output head's input in full precision; a Linear
    missing from ``ranges`` (never run during calibration) is left alone."""
    for name, linear in linears(model):
        if name in ranges and not (skip_head and name == HEAD):
            lo, hi = ranges[name]
            linear.register_forward_pre_hook(replace_input(lambda x, lo=lo, hi=hi: quantize_asymmetric(x, bits, lo, hi)))
    return model


def clip_activations(model: nn.Module, batches: Iterable, percentile: float = 99.9) -> nn.Module:
    """The naive baseline ("remove outliers by force"): a copy in which the input of each
    nn.Linear is clamped to [-p, p], p the ``percentile`` of that input's |values| on the
    calibration batches."""
    clipped = working_copy(model)
    for name, bound in calibrate_abs_percentiles(clipped, batches, percentile).items():
        clipped.get_submodule(name).register_forward_pre_hook(
            replace_input(lambda x, p=bound: x.clamp(-p, p)))
    return clipped
