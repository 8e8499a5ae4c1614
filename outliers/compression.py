"""Post-training compression protocols, scored by validation perplexity (DESIGN.md section 4).

Every protocol works on a deep copy of the model and never touches the trained weights: the
original's parameters and buffers are the same objects with the same bits afterwards, it has
no hooks left on it, and its train/eval flags are restored. Quantization is *fake*
quantization: quantize, then dequantize back to float, so the compressed model runs in the
original dtype and the only change is the rounding error. Activations are quantized or
clipped by forward pre-hooks on the inputs of ``nn.Linear`` modules of the copy.

Sources:
- seed:        An et al. 2025, "Systematic Outliers in Large Language Models": 8-bit abs-max
               weight quantization and 50% magnitude pruning as outlier-sensitive probes.
- Bondarenko:  Bondarenko et al. 2023, "Quantizable Transformers": W8A8 with static
               min-max activation ranges, output head kept in full precision.
- SmoothQuant: Xiao et al. 2023, "SmoothQuant": per-channel scale s migrated from the
               activations into the next Linear's weights, s = max|X|^a / max|W|^(1-a).
- OS+:         Wei et al. 2023, "Outlier Suppression+": a per-channel shift z (the midpoint
               of the channel's range) before the scale, folded into the next Linear's bias.

Batches: calibration and validation batches are lists of (x, y) LongTensor pairs (B, T);
calibration uses only x. Functions that take "token batches" accept either bare id
tensors or such pairs.
"""

from __future__ import annotations

import copy
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn import functional as F

from errors import ConfigError
from outliers.metrics.registry import Metric, declare

HEAD = "lm_head"  # module name of the output head (tied to transformer.wte in models.gpt.GPT)
DEFAULT_PROTOCOLS = ("w8a8", "w8_absmax", "w4_per_channel", "prune50", "clip_p99.9")


# --------------------------------------------------------------------------------------------
# Quantizers (pure tensor functions)
# --------------------------------------------------------------------------------------------

def quantize_symmetric(x: torch.Tensor, bits: int, dim: int | None = None) -> torch.Tensor:
    """Symmetric abs-max fake quantization to signed ``bits``-bit integers.

    scale = max|x| / (2^(bits-1) - 1), over the whole tensor (``dim=None``) or separately for
    each slice ``x.select(dim, i)`` (for a Linear weight (out, in), ``dim=0`` gives one scale
    per output channel, i.e. per row); q = clamp(round(x / scale), -qmax, qmax) * scale with
    qmax = 2^(bits-1) - 1. An all-zero tensor or slice stays zero. Computed in float32 and
    returned in x's dtype.
    """
    qmax = 2 ** (bits - 1) - 1
    x32 = x.float()
    if dim is None:
        amax = x32.abs().amax()
    else:
        others = [d for d in range(x.dim()) if d != dim % x.dim()]
        amax = x32.abs().amax(dim=others, keepdim=True) if others else x32.abs()
    scale = torch.where(amax > 0, amax / qmax, torch.ones_like(amax))
    return ((x32 / scale).round().clamp(-qmax, qmax) * scale).to(x.dtype)


def quantize_asymmetric(x: torch.Tensor, bits: int, lo: float, hi: float) -> torch.Tensor:
    """Asymmetric (affine) min-max fake quantization to unsigned ``bits``-bit integers.

    scale = (hi - lo) / (2^bits - 1), zero_point = round(-lo / scale);
    q = (clamp(round(x / scale) + zero_point, 0, 2^bits - 1) - zero_point) * scale.
    Values outside [lo, hi] are clipped to the end of the grid. A degenerate range
    (hi == lo) maps everything to lo. Computed in float32 and returned in x's dtype.
    """
    lo, hi = float(lo), float(hi)
    levels = 2**bits - 1
    scale = (hi - lo) / levels
    if scale <= 0:
        return torch.full_like(x, lo)
    zero_point = round(-lo / scale)
    q = ((x.float() / scale).round() + zero_point).clamp(0, levels)
    return ((q - zero_point) * scale).to(x.dtype)


# --------------------------------------------------------------------------------------------
# Helpers: copies, modes, calibration passes
# --------------------------------------------------------------------------------------------

def _copy(model: nn.Module) -> nn.Module:
    """A deep copy in eval mode without gradients. Tied weights stay tied within the copy."""
    clone = copy.deepcopy(model)
    for p in clone.parameters():
        p.grad = None
    return clone.eval()


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _token_ids(batches: Iterable) -> list[torch.Tensor]:
    """The model inputs of a batch iterable: x from (x, y) pairs, or the tensors themselves."""
    return [b[0] if isinstance(b, (tuple, list)) else b for b in batches]


def _linears(model: nn.Module) -> Iterator[tuple[str, nn.Linear]]:
    return ((name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear))


@contextmanager
def _eval_mode(model: nn.Module):
    """Eval mode and no grad inside; every module's own train/eval flag restored after."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        for m, training in flags:
            m.training = training


def _run_with_input_hooks(model: nn.Module, inputs: list[torch.Tensor],
                          record: Callable[[str, torch.Tensor], None]) -> None:
    """Run ``model`` on each input (eval, no grad), calling ``record(name, x)`` with the input
    of every nn.Linear; the temporary hooks are removed afterwards."""
    handles = [
        module.register_forward_pre_hook(lambda _m, args, name=name: record(name, args[0].detach()))
        for name, module in _linears(model)
    ]
    device = _device(model)
    try:
        with _eval_mode(model):
            for x in inputs:
                model(x.to(device))
    finally:
        for handle in handles:
            handle.remove()


def _replace_input(transform: Callable[[torch.Tensor], torch.Tensor]):
    """A forward pre-hook that replaces a module's first input by ``transform(input)``."""
    def hook(_module, args):
        return (transform(args[0]), *args[1:])
    return hook


# --------------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------------

def _unique_weights(model: nn.Module, skip_head: bool = False) -> Iterator[tuple[str, nn.Linear]]:
    """Each nn.Linear once per weight tensor (a weight shared by two Linears is visited once)."""
    seen = set()
    for name, module in _linears(model):
        if (skip_head and name == HEAD) or id(module.weight) in seen:
            continue
        seen.add(id(module.weight))
        yield name, module


def quantize_weights(model: nn.Module, bits: int, per_channel: bool = False, skip_head: bool = False) -> nn.Module:
    """A copy with every nn.Linear weight fake-quantized by ``quantize_symmetric``, per tensor
    or per output channel (one scale per row).

    The output head is tied to the token embedding, so quantizing ``lm_head.weight``
    quantizes the embedding too (intended for the weights-only protocols: the seed paper
    quantizes every weight). With ``skip_head=True`` the head, and with it the tied
    embedding, stay in full precision (Bondarenko). The embedding is not an nn.Linear, so
    nothing else reaches it and no untying is needed.
    """
    quantized = _copy(model)
    with torch.no_grad():
        for _, linear in _unique_weights(quantized, skip_head):
            linear.weight.copy_(quantize_symmetric(linear.weight, bits, dim=0 if per_channel else None))
    return quantized


def prune_magnitude(model: nn.Module, sparsity: float = 0.5) -> nn.Module:
    """A copy with unstructured magnitude pruning (seed paper): in each nn.Linear separately
    the round(sparsity * numel) weights of smallest |w| are set to zero, exactly that many
    (ties broken by flat index, lower first, via a stable sort). The tied output head /
    embedding counts as one Linear (``lm_head``)."""
    pruned = _copy(model)
    with torch.no_grad():
        for _, linear in _unique_weights(pruned):
            flat = linear.weight.view(-1)
            count = int(round(sparsity * flat.numel()))
            smallest = torch.argsort(flat.abs(), stable=True)[:count]
            flat[smallest] = 0
    return pruned


# --------------------------------------------------------------------------------------------
# Activations
# --------------------------------------------------------------------------------------------

def calibrate_input_ranges(model: nn.Module, batches: Iterable) -> dict[str, tuple[float, float]]:
    """Static ranges: min and max of the input of every nn.Linear, by module name, over the
    token batches (model in eval mode, no grad; the model is left as it was)."""
    lo: dict[str, torch.Tensor] = {}
    hi: dict[str, torch.Tensor] = {}

    def record(name: str, x: torch.Tensor) -> None:
        x_lo, x_hi = x.min().float(), x.max().float()
        lo[name] = torch.minimum(lo[name], x_lo) if name in lo else x_lo
        hi[name] = torch.maximum(hi[name], x_hi) if name in hi else x_hi

    _run_with_input_hooks(model, _token_ids(batches), record)
    return {name: (lo[name].item(), hi[name].item()) for name in lo}


def _attach_input_quantizers(model: nn.Module, ranges: dict[str, tuple[float, float]], bits: int,
                             skip_head: bool) -> nn.Module:
    """In place: pre-hooks fake-quantizing each calibrated Linear's input (asymmetric, per tensor)."""
    for name, linear in _linears(model):
        if name in ranges and not (skip_head and name == HEAD):
            lo, hi = ranges[name]
            linear.register_forward_pre_hook(_replace_input(lambda x, lo=lo, hi=hi: quantize_asymmetric(x, bits, lo, hi)))
    return model


def quantize_activations(model: nn.Module, ranges: dict[str, tuple[float, float]], bits: int = 8,
                         skip_head: bool = False) -> nn.Module:
    """A copy whose nn.Linear inputs are fake-quantized asymmetrically per tensor with the
    static ``ranges`` of ``calibrate_input_ranges`` (Bondarenko's activation quantizer).
    ``skip_head`` leaves the output head's input in full precision. A Linear missing from
    ``ranges`` (never run during calibration) is left alone."""
    return _attach_input_quantizers(_copy(model), ranges, bits, skip_head)


def _quantile_from_top(top: torch.Tensor, n: int, q: float) -> float:
    """The q-quantile (linear interpolation, as torch.quantile) of n values, given their
    largest ones sorted descending; needs at least n - floor(q (n-1)) of them."""
    pos = q * (n - 1)
    below = math.floor(pos)
    value = top[n - 1 - below].item()
    if pos > below:
        value += (pos - below) * (top[n - 2 - below].item() - value)
    return value


def calibrate_abs_percentiles(model: nn.Module, batches: Iterable, percentile: float = 99.9) -> dict[str, float]:
    """The ``percentile`` of |input| of every nn.Linear over all elements of all token batches,
    by module name, exact (torch.quantile's linear interpolation). Two passes: the first
    counts the elements, the second keeps only the largest values needed for that count."""
    inputs = _token_ids(batches)
    q = percentile / 100
    counts: dict[str, int] = defaultdict(int)

    def count(name: str, x: torch.Tensor) -> None:
        counts[name] += x.numel()

    _run_with_input_hooks(model, inputs, count)
    needed = {name: n - math.floor(q * (n - 1)) for name, n in counts.items()}
    top: dict[str, torch.Tensor] = {}

    def record(name: str, x: torch.Tensor) -> None:
        values = x.abs().flatten().float()
        if name in top:
            values = torch.cat([top[name], values])
        top[name] = values.topk(min(needed[name], values.numel())).values

    _run_with_input_hooks(model, inputs, record)
    return {name: _quantile_from_top(top[name], counts[name], q) for name in top}


def clip_activations(model: nn.Module, batches: Iterable, percentile: float = 99.9) -> nn.Module:
    """The naive baseline ("remove outliers by force"): a copy in which the input of each
    nn.Linear is clamped to [-p, p], p the ``percentile`` of that input's |values| on the
    calibration batches."""
    clipped = _copy(model)
    for name, bound in calibrate_abs_percentiles(clipped, batches, percentile).items():
        clipped.get_submodule(name).register_forward_pre_hook(
            _replace_input(lambda x, p=bound: x.clamp(-p, p)))
    return clipped


# --------------------------------------------------------------------------------------------
# Shift and scale (OS+ / SmoothQuant)
# --------------------------------------------------------------------------------------------

def _head_gate(attn: nn.Module) -> nn.Module | None:
    """The gated variant with ``gate_input="head"`` reads the attention input x without an
    nn.Linear: gate_h = sigmoid(sum_j w_hj x_(h,j) + b_h), a block-diagonal Linear whose weight
    for channel c = h*d + j is ``gate_weight.view(-1)[c]``. Returned so it is folded too."""
    return attn if getattr(attn, "gate_input", None) == "head" and hasattr(attn, "gate_weight") else None


def _norm_readers(model: nn.Module, inputs: list[torch.Tensor]) -> dict[nn.Module, dict]:
    """For each block's ln_1 and ln_2: per-channel min and max of its output over the inputs,
    and the nn.Linears that read that output, found by tensor identity during the pass
    (c_attn, plus context_scale / gate_proj of the explicit_scale and gated variants; c_fc)."""
    norms = {}
    for block in model.transformer.h:
        norms[block.ln_1] = {"gate": _head_gate(block.attn)}
        norms[block.ln_2] = {"gate": None}
    for stats in norms.values():
        stats.update(lo=None, hi=None, readers=[], output=None)

    def on_norm(norm, _args, out):
        stats = norms[norm]
        flat = out.detach().float().reshape(-1, out.size(-1))
        lo, hi = flat.amin(0), flat.amax(0)
        stats["lo"] = lo if stats["lo"] is None else torch.minimum(stats["lo"], lo)
        stats["hi"] = hi if stats["hi"] is None else torch.maximum(stats["hi"], hi)
        stats["output"] = out

    def on_linear(linear, args):
        for stats in norms.values():
            if args[0] is stats["output"] and linear not in stats["readers"]:
                stats["readers"].append(linear)

    handles = [norm.register_forward_hook(on_norm) for norm in norms]
    handles += [linear.register_forward_pre_hook(on_linear) for _, linear in _linears(model)]
    device = _device(model)
    try:
        with _eval_mode(model):
            for x in inputs:
                model(x.to(device))
                for stats in norms.values():
                    stats["output"] = None
    finally:
        for handle in handles:
            handle.remove()
    return norms


def _fold_shift_scale(norm: nn.Module, readers: list[nn.Linear], gate: nn.Module | None,
                      lo: torch.Tensor, hi: torch.Tensor, alpha: float) -> None:
    """In place: x' = (x - z) / s at the norm's output, compensated in every reader.

    z = (max + min) / 2 per channel if the norm and all readers have biases, else 0 (OS+);
    s_c = max|x_c - z_c|^alpha / max_i |W_ic|^(1 - alpha), clamped to >= 1e-5 (SmoothQuant),
    the weight max taken over all readers. Norm: gamma' = gamma / s, beta' = (beta - z) / s.
    Reader: W' = W diag(s), b' = b + W z.
    """
    has_bias = getattr(norm, "bias", None) is not None and all(r.bias is not None for r in readers)
    z = (hi + lo) / 2 if has_bias else torch.zeros_like(lo)
    act_max = torch.maximum(hi - z, z - lo)
    weights = [r.weight.abs().float() for r in readers]
    if gate is not None:
        weights.append(gate.gate_weight.abs().float().reshape(1, -1))
    w_max = torch.cat(weights).amax(0)
    s = (act_max.clamp(min=1e-5).pow(alpha) / w_max.clamp(min=1e-5).pow(1 - alpha)).clamp(min=1e-5)
    dtype = norm.weight.dtype
    for r in readers:
        if has_bias:
            r.bias.add_((r.weight.float() @ z).to(r.bias.dtype))
        r.weight.mul_(s.to(r.weight.dtype))
    if gate is not None:
        w = gate.gate_weight
        if has_bias:
            gate.gate_bias.add_((w.float() * z.view_as(w)).sum(-1).to(w.dtype))
        w.mul_(s.view_as(w).to(w.dtype))
    if getattr(norm, "bias", None) is not None:
        norm.bias.copy_(((norm.bias.float() - z) / s).to(dtype))
    norm.weight.copy_((norm.weight.float() / s).to(dtype))


def smooth_shift_scale(model: nn.Module, batches: Iterable, alpha: float = 0.5) -> nn.Module:
    """A copy with channel-wise shift and scale of activations migrated into the next Linear
    (Wei et al. 2023 OS+; Xiao et al. 2023 SmoothQuant), for each block's ln_1 -> attention
    input projections and ln_2 -> mlp.c_fc. See ``_fold_shift_scale`` for the definitions.
    The transform is exact in real arithmetic: the fp32 copy gives the original logits (to
    rounding); only the ranges that a later quantizer sees change. The norm's affine weight
    is required (LayerNorm or RMSNorm with elementwise_affine)."""
    smoothed = _copy(model)
    norms = _norm_readers(smoothed, _token_ids(batches))
    with torch.no_grad():
        for norm, stats in norms.items():
            if stats["readers"] and stats["lo"] is not None:
                _fold_shift_scale(norm, stats["readers"], stats["gate"], stats["lo"], stats["hi"], alpha)
    return smoothed


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------

def perplexity(model: nn.Module, batches: Iterable) -> float:
    """exp of the token-weighted mean cross-entropy over (x, y) LongTensor pairs, in eval
    mode without grad (the model's train/eval flags are restored); inf if it overflows."""
    device = _device(model)
    total, tokens = 0.0, 0
    with _eval_mode(model):
        for x, y in batches:
            logits = model(x.to(device))
            total += F.cross_entropy(logits.float().flatten(0, -2), y.to(device).flatten(), reduction="sum").item()
            tokens += y.numel()
    mean = total / tokens
    return math.exp(mean) if mean < 700 else math.inf


def _w8a8(model: nn.Module, calib_batches: Iterable, *, keep_head_fp: bool) -> nn.Module:
    """Weights 8-bit symmetric per tensor; every Linear input 8-bit asymmetric per tensor with
    static ranges calibrated on the weight-quantized copy; ``keep_head_fp`` keeps the output
    head's weight (and the tied embedding) and input in full precision (Bondarenko)."""
    quantized = quantize_weights(model, 8, skip_head=keep_head_fp)
    ranges = calibrate_input_ranges(quantized, calib_batches)
    return _attach_input_quantizers(quantized, ranges, 8, skip_head=keep_head_fp)


def _smooth_w8a8(model: nn.Module, calib_batches: Iterable, *, keep_head_fp: bool) -> nn.Module:
    """OS+ / SmoothQuant shift and scale (alpha 0.5), then W8A8 calibrated on the result."""
    return _w8a8(smooth_shift_scale(model, calib_batches, alpha=0.5), calib_batches, keep_head_fp=keep_head_fp)


def _w8_absmax(model: nn.Module, calib_batches: Iterable, *, keep_head_fp: bool = True) -> nn.Module:
    """Seed paper: weights only, 8-bit symmetric abs-max per tensor, head (and embedding) too."""
    return quantize_weights(model, 8)


def _w4_per_channel(model: nn.Module, calib_batches: Iterable, *, keep_head_fp: bool = True) -> nn.Module:
    """Weights only, 4-bit symmetric per output channel, head (and embedding) too."""
    return quantize_weights(model, 4, per_channel=True)


def _prune50(model: nn.Module, calib_batches: Iterable, *, keep_head_fp: bool = True) -> nn.Module:
    """Seed paper: 50% unstructured magnitude pruning of each Linear, head included."""
    return prune_magnitude(model, 0.5)


def _clip_p999(model: nn.Module, calib_batches: Iterable, *, keep_head_fp: bool = True) -> nn.Module:
    """Naive baseline: every Linear input clamped at its 99.9th percentile of |x|."""
    return clip_activations(model, calib_batches, 99.9)


# name -> callable(model, calib_batches, *, keep_head_fp) -> compressed copy. keep_head_fp
# only concerns the W8A8 protocols; the others follow the seed paper and compress every
# Linear, the output head (and so the tied embedding) included.
PROTOCOLS: dict[str, Callable[..., nn.Module]] = {
    "w8a8": _w8a8,
    "w8_absmax": _w8_absmax,
    "w4_per_channel": _w4_per_channel,
    "prune50": _prune50,
    "clip_p99.9": _clip_p999,
    "smooth_w8a8": _smooth_w8a8,
}


# The report's columns: ppl ratios of the protocols with a header here come first, the
# others (declared, without a header) follow when the runs have them.
declare(*(Metric(f"compress/{name}/ppl_ratio", f"{name} perplexity / full precision",
                 column={"w8a8": "W8A8 ppl ratio", "w8_absmax": "W8 ppl ratio",
                         "prune50": "prune50 ppl ratio"}.get(name))
          for name in PROTOCOLS))


def check_protocols(names: Iterable[str] | str | None) -> list[str]:
    """The protocol names as a list; unknown ones raise ConfigError listing the valid names."""
    names = [names] if isinstance(names, str) else list(names or [])
    unknown = [name for name in names if name not in PROTOCOLS]
    if unknown:
        raise ConfigError(f"unknown compression protocol(s) {unknown}; valid: {', '.join(PROTOCOLS)}")
    return names


def evaluate_protocols(model: nn.Module, names: Iterable[str], val_batches: Iterable, calib_batches: Iterable,
                       keep_head_fp: bool = True) -> dict[str, float]:
    """Validation perplexity in full precision ("compress/fp/ppl"), then for each protocol
    name "compress/{name}/ppl" and "compress/{name}/ppl_ratio" (= ppl / fp ppl). Unknown
    names raise ConfigError before any work. The model itself is not changed."""
    names = check_protocols(names)
    val_batches, calib_batches = list(val_batches), list(calib_batches)
    fp_ppl = perplexity(model, val_batches)
    results = {"compress/fp/ppl": fp_ppl}
    for name in names:
        compressed = PROTOCOLS[name](model, calib_batches, keep_head_fp=keep_head_fp)
        ppl = perplexity(compressed, val_batches)
        del compressed
        results[f"compress/{name}/ppl"] = ppl
        results[f"compress/{name}/ppl_ratio"] = ppl / fp_ppl
    return results
