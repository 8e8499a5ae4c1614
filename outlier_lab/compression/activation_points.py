"""Bondarenko et al.'s activation quantization (their transformers_language/models/quantized_opt.py):
every activation the GPT computes, 8-bit asymmetric per tensor, with a static range per
point calibrated by ``ranges.RunningRange``.

The points, forward hooks on the outputs of these modules of a working copy:
- every nn.Linear, except the MLP's ``c_fc``, which they fuse with its activation function
  (fc1 and its ReLU quantized once, after the ReLU): it is quantized at ``mlp.act_out``,
  the hidden activation that ``c_proj`` reads; and except the output head with ``keep_head_fp``;
- every norm (models.norms.NORMS: LayerNorm, RMSNorm, single-scale): ln_1, ln_2, ln_f;
  differential's per-head subln; with ``model.qk_norm`` each attention's q_norm and k_norm;
- every nn.Identity, the points that outlier_lab/models/gpt.py and outlier_lab/models/attention/base.py expose:
  the embedding sum ``transformer.emb_out``, the residual sums ``resid_attn`` and
  ``resid_mlp``, ``mlp.act_out``, and in the attention ``attn_out`` (P V, what c_proj reads)
  and ``attn_probs`` (the attention weights, through which ``expose_probs`` routes them).

A point called more than once in one forward (``attn_probs`` of differential, with two
softmax maps, and of ca_bias, whose slot weight comes from a second softmax) gets one range
per call, as their code has one quantizer per place in the forward.

Calibration runs the copy on the calibration batches with the quantizers already on, each
quantizing with its running estimate, so later points see quantized earlier ones (their
QuantizationManager in its estimate_ranges state); the ranges are then fixed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from torch import nn

from outlier_lab.models.attention.base import CausalSelfAttention
from outlier_lab.models.norms import NORMS
from outlier_lab.compression.passes import HEAD, forward_all, token_ids
from outlier_lab.compression.quantizers import quantize_asymmetric
from outlier_lab.compression.ranges import RunningRange

POINT_MODULES = (nn.Linear, *NORMS, nn.Identity)
FUSED_WITH_ACTIVATION = "mlp.c_fc"  # quantized after its activation, at mlp.act_out


def activation_points(model: nn.Module, keep_head_fp: bool) -> list[tuple[str, nn.Module]]:
    """(name, module) of every module whose output ``quantize_activations`` quantizes."""
    return [(name, module) for name, module in model.named_modules()
            if isinstance(module, POINT_MODULES) and not name.endswith(FUSED_WITH_ACTIVATION)
            and not (keep_head_fp and name == HEAD)]


class StaticQuantizers:
    """The ranges of all points, one per (point, call within a forward), and the hooks that
    estimate them (while ``calibrating``) and quantize with them."""

    def __init__(self, bits: int, percentile: float | None):
        self.bits, self.percentile = bits, percentile
        self.ranges: dict[tuple[str, int], RunningRange] = {}
        self.calls: Counter[str] = Counter()
        self.calibrating = True

    def start_forward(self, *_) -> None:
        """A forward pre-hook of the whole model: counting calls starts again."""
        self.calls.clear()

    def hook(self, name: str):
        def quantize_output(_module, _args, out):
            key = (name, self.calls[name])
            self.calls[name] += 1
            if self.calibrating:
                self.ranges.setdefault(key, RunningRange(self.percentile)).update(out)
            elif key not in self.ranges:
                raise RuntimeError(f"{name} ran {key[1] + 1} times in one forward pass, more than during "
                                   "calibration: it has no calibrated range for that call")
            return quantize_asymmetric(out, self.bits, *self.ranges[key].quant_range())
        return quantize_output


def quantize_activations(model: nn.Module, batches: Iterable, bits: int, percentile: float | None,
                         keep_head_fp: bool) -> nn.Module:
    """In place on a working copy: every activation point (module docstring) quantized with
    a static range calibrated on the token batches (the running min-max, or with
    ``percentile`` the running percentiles). Every attention runs its eager path, so that
    its weights pass through ``attn_probs``."""
    for module in model.modules():
        if isinstance(module, CausalSelfAttention):
            module.expose_probs = True
    quantizers = StaticQuantizers(bits, percentile)
    model.register_forward_pre_hook(quantizers.start_forward)
    for name, module in activation_points(model, keep_head_fp):
        module.register_forward_hook(quantizers.hook(name))
    forward_all(model, token_ids(batches), hooks=[])
    quantizers.calibrating = False
    return model
