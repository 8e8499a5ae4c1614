"""The compression protocols, registered by name.

A protocol is one function ``fn(model, calib_batches, *, keep_head_fp) -> compressed copy``
decorated with ``@protocol(name, column=...)``: that registers it for ``eval.compression``
and declares its metrics ``compress/<name>/ppl_ratio`` (a column of the report table when
``column`` is given), ``compress/<name>/kl`` and ``compress/<name>/top1_agreement``.
``keep_head_fp`` only concerns the W8A8 protocols; the others follow the seed paper and
compress every Linear, the output head (and so the tied embedding) included. Which
protocols a run uses by default is configs/eval/default.yaml.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from torch import nn

from outlier_lab.errors import ConfigError
from outlier_lab.compression.activation_points import quantize_activations
from outlier_lab.compression.activations import attach_input_quantizers, clip_activations
from outlier_lab.compression.observers import calibrate_input_ranges
from outlier_lab.compression.smoothing import smooth_shift_scale
from outlier_lab.compression.weights import prune_magnitude, quantize_weights, quantize_weights_mse
from outlier_lab.metrics.registry import Metric, declare

Protocol = Callable[..., nn.Module]

# name -> protocol, in registration order (the report's order of the columns without a header)
PROTOCOLS: dict[str, Protocol] = {}
# the protocols that need what only our GPT has (its named activation points, its blocks' input
# readers): a Hugging Face model runs the others (outlier_lab/pretrained/compress.py)
OUR_GPT_ONLY: set[str] = set()


def protocol(name: str, column: str | None = None, our_gpt_only: bool = False) -> Callable[[Protocol], Protocol]:
    """Decorator: register ``fn`` as the compression protocol ``name`` and declare its metrics
    (evaluation.evaluate_protocols computes them): ``compress/<name>/ppl_ratio``, with the
    report column header ``column`` (None: no column), ``kl`` and ``top1_agreement``.
    ``our_gpt_only``: it reads modules that only models.gpt.GPT has."""
    def decorator(fn: Protocol) -> Protocol:
        old = PROTOCOLS.get(name)
        if old is not None and old.__qualname__ != fn.__qualname__:
            raise RuntimeError(f"compression protocol {name!r} is registered twice: {old.__qualname__}, {fn.__qualname__}")
        declare(Metric(f"compress/{name}/ppl_ratio", f"{name} perplexity / full precision", column=column),
                Metric(f"compress/{name}/kl", f"{name}: mean KL divergence of its next-token distribution "
                                              "from the full-precision one, KL(p_fp || p) (nats/token)"),
                Metric(f"compress/{name}/top1_agreement", f"{name}: share of tokens whose most likely next "
                                                          "token is the full-precision model's"))
        PROTOCOLS[name] = fn
        if our_gpt_only:
            OUR_GPT_ONLY.add(name)
        return fn
    return decorator


def check_protocols(names: Iterable[str] | str | None) -> list[str]:
    """The protocol names as a list; unknown ones raise ConfigError listing the valid names."""
    names = [names] if isinstance(names, str) else list(names or [])
    unknown = [name for name in names if name not in PROTOCOLS]
    if unknown:
        raise ConfigError(f"unknown compression protocol(s) {unknown}; valid: {', '.join(PROTOCOLS)}")
    return names


@protocol("w8a8", column="W8A8 ppl ratio", our_gpt_only=True)
def w8a8(model: nn.Module, calib_batches: Iterable, *, keep_head_fp: bool) -> nn.Module:
    """Bondarenko et al.'s W8A8, with their code's default activation range, the running
    min-max: weights (Linear, embeddings, norms) 8-bit per tensor on MSE-searched ranges,
    every activation 8-bit asymmetric per tensor with static ranges (activation_points.py);
    ``keep_head_fp`` keeps the output head in full precision (their fp32_head)."""
    return _bondarenko_w8a8(model, calib_batches, None, keep_head_fp)


@protocol("w8a8_p99999", our_gpt_only=True)
def w8a8_p99999(model: nn.Module, calib_batches: Iterable, *, keep_head_fp: bool) -> nn.Module:
    """``w8a8`` with running 0.001th / 99.999th percentiles as activation ranges (the
    estimator of their README's OPT INT8 command: running_minmax --percentile 99.999)."""
    return _bondarenko_w8a8(model, calib_batches, 99.999, keep_head_fp)


def _bondarenko_w8a8(model: nn.Module, calib_batches: Iterable, percentile: float | None, keep_head_fp: bool):
    """Weights on their MSE ranges, then every activation with running min-max ranges
    (``percentile`` None) or running percentiles, calibrated on the weight-quantized copy."""
    quantized = quantize_weights_mse(model, 8, keep_head_fp)
    return quantize_activations(quantized, calib_batches, 8, percentile, keep_head_fp)


@protocol("w8a8_linear")
def w8a8_linear(model: nn.Module, calib_batches: Iterable, *, keep_head_fp: bool) -> nn.Module:
    """Linear inputs only: weights 8-bit symmetric abs-max per tensor; every Linear input 8-bit
    asymmetric per tensor with static min-max ranges calibrated on the weight-quantized copy;
    ``keep_head_fp`` keeps the output head's weight (and the tied embedding) and input in full
    precision. The residual stream is never quantized: the W8A8 of GEMM-input methods
    (SmoothQuant, OS+), not Bondarenko's."""
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


@protocol("smooth_w8a8", our_gpt_only=True)
def smooth_w8a8(model: nn.Module, calib_batches: Iterable, *, keep_head_fp: bool) -> nn.Module:
    """OS+ / SmoothQuant shift and scale (alpha 0.5), then ``w8a8_linear`` calibrated on the
    result: their W8A8 quantizes the inputs of the Linear layers, which smoothing reshapes."""
    return w8a8_linear(smooth_shift_scale(model, calib_batches, alpha=0.5), calib_batches, keep_head_fp=keep_head_fp)
