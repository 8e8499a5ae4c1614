"""The compression protocols, registered by name.

A protocol is one function ``fn(model, calib_batches, *, keep_head_fp) -> compressed copy``
decorated with ``@protocol(name, column=...)``: that registers it for ``eval.compression``
and declares its report metric ``compress/<name>/ppl_ratio`` (a column of the report table
when ``column`` is given). ``keep_head_fp`` only concerns the W8A8 protocols; the others
follow the seed paper and compress every Linear, the output head (and so the tied
embedding) included. Which protocols a run uses by default is configs/eval/default.yaml.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from torch import nn

from errors import ConfigError
from outliers.compression.activations import attach_input_quantizers, clip_activations
from outliers.compression.observers import calibrate_input_ranges
from outliers.compression.smoothing import smooth_shift_scale
from outliers.compression.weights import prune_magnitude, quantize_weights
from outliers.metrics.registry import Metric, declare

Protocol = Callable[..., nn.Module]

# name -> protocol, in registration order (the report's order of the columns without a header)
PROTOCOLS: dict[str, Protocol] = {}


def protocol(name: str, column: str | None = None) -> Callable[[Protocol], Protocol]:
    """Decorator: register ``fn`` as the compression protocol ``name`` and declare its metric
    ``compress/<name>/ppl_ratio``, with the report column header ``column`` (None: no column)."""
    def decorator(fn: Protocol) -> Protocol:
        old = PROTOCOLS.get(name)
        if old is not None and old.__qualname__ != fn.__qualname__:
            raise RuntimeError(f"compression protocol {name!r} is registered twice: {old.__qualname__}, {fn.__qualname__}")
        declare(Metric(f"compress/{name}/ppl_ratio", f"{name} perplexity / full precision", column=column))
        PROTOCOLS[name] = fn
        return fn
    return decorator


def check_protocols(names: Iterable[str] | str | None) -> list[str]:
    """The protocol names as a list; unknown ones raise ConfigError listing the valid names."""
    names = [names] if isinstance(names, str) else list(names or [])
    unknown = [name for name in names if name not in PROTOCOLS]
    if unknown:
        raise ConfigError(f"unknown compression protocol(s) {unknown}; valid: {', '.join(PROTOCOLS)}")
    return names


@protocol("w8a8", column="W8A8 ppl ratio")
def w8a8(model: nn.Module, calib_batches: Iterable, *, keep_head_fp: bool) -> nn.Module:
    """Weights 8-bit symmetric per tensor; every Linear input 8-bit asymmetric per tensor with
    static ranges calibrated on the weight-quantized copy; ``keep_head_fp`` keeps the output
    head's weight (and the tied embedding) and input in full precision (Bondarenko)."""
    quantized = quantize_weights(model, 8, skip_head=keep_head_fp)
    ranges = calibrate_input_ranges(quantized, calib_batches)
    return attach_input_quantizers(quantized, ranges, 8, skip_head=keep_head_fp)


@protocol("w8_absmax", column="W8 ppl ratio")
def w8_absmax(model: nn.Module, calib_batches: Iterable, *, keep_head_fp: bool = True) -> nn.Module:
    """Seed paper: weights only, 8-bit symmetric abs-max per tensor, head (and embedding) too."""
    return quantize_weights(model, 8)


@protocol("w4_per_channel")
def w4_per_channel(model: nn.Module, calib_batches: Iterable, *, keep_head_fp: bool = True) -> nn.Module:
    """Weights only, 4-bit symmetric per output channel, head (and embedding) too."""
    return quantize_weights(model, 4, per_channel=True)


@protocol("prune50", column="prune50 ppl ratio")
def prune50(model: nn.Module, calib_batches: Iterable, *, keep_head_fp: bool = True) -> nn.Module:
    """Seed paper: 50% unstructured magnitude pruning of each Linear, head included."""
    return prune_magnitude(model, 0.5)


@protocol("clip_p99.9")
def clip_p999(model: nn.Module, calib_batches: Iterable, *, keep_head_fp: bool = True) -> nn.Module:
    """Naive baseline: every Linear input clamped at its 99.9th percentile of |x|."""
    return clip_activations(model, calib_batches, 99.9)


@protocol("smooth_w8a8")
def smooth_w8a8(model: nn.Module, calib_batches: Iterable, *, keep_head_fp: bool) -> nn.Module:
    """OS+ / SmoothQuant shift and scale (alpha 0.5), then W8A8 calibrated on the result."""
    return w8a8(smooth_shift_scale(model, calib_batches, alpha=0.5), calib_batches, keep_head_fp=keep_head_fp)
