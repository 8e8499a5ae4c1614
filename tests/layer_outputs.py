"""Each block's attention output of a fast path against its fp32 eager reference, layer by
layer: the check that catches a wrong kernel in one layer even where the loss barely moves.

Used by tests/test_gpu.py (CUDA, bf16 autocast on backend=auto) and tested on CPU by
tests/test_layer_outputs.py (the same comparison under CPU bf16 autocast, and a planted fault).
"""

from __future__ import annotations

import math

import torch

from outlier_lab.models.attention import get_attention_class
from outlier_lab.models.gpt import GPT

# bf16 keeps 8 significant bits (unit roundoff 2^-9 ~ 0.002). Over the QKV projection, the
# attention and the output projection of a 2-layer GPT, the layers' outputs on CPU bf16
# autocast differ from fp32 by 0.4-1.1% in norm and 0.4-1.7% of the largest value (every
# variant but softpick, logits ~ N(0, 1)); these bounds leave room for the GPU kernels' other
# order of summation, and a 5% error in one layer is still twice over them. Softpick is
# ill-conditioned in bf16 (a weight relu(e^s - 1) / sum |e^s - 1| near s = 0 moves by far more
# than s's rounding: 1-2.5% in norm, 10-20% of the largest value, on its eager path too), so
# each layer's bound is also at least FLOOR_FACTOR x the error of the eager path under the
# same autocast: the fast path may be no worse than twice what bf16 itself costs the variant.
BF16_REL_NORM, BF16_REL_MAX = 0.025, 0.04
FLOOR_FACTOR = 2.0


def variant_gpt(name: str, backend: str, *, n_head: int = 4, head_size: int = 64, block_size: int = 256,
                seed: int = 0, device: str = "cpu") -> GPT:
    """Two layers of the variant with its last test options (the most branches), minus the
    layer index, which the GPT sets per block."""
    torch.manual_seed(seed)
    options = {k: v for k, v in get_attention_class(name).test_options[-1].items() if k != "layer_idx"}
    attention = {"name": name, **options, "backend": backend}
    return GPT(vocab_size=256, n_layer=2, n_embd=n_head * head_size, n_head=n_head, block_size=block_size,
               attention=attention).to(device)


def sharpen(model: GPT) -> GPT:
    """The QKV projections rescaled to std 1/sqrt(C), so that q, k are ~unit and the logits
    ~N(0, 1). At GPT init (std 0.02) the logits are ~0.1 and every row is near uniform, where
    a kernel that drops the 1/sqrt(d) or mis-normalises a row changes almost nothing."""
    with torch.no_grad():
        for block in model.transformer.h:
            weight = block.attn.c_attn.weight
            weight.mul_(1 / (math.sqrt(weight.size(1)) * weight.std()))
    return model


def same_weights(fast: GPT, reference: GPT) -> GPT:
    """``fast`` with the reference's weights (its backend stays its own)."""
    fast.load_state_dict(reference.state_dict())
    return fast


def attention_outputs(model: GPT, idx: torch.Tensor, bf16: bool) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Each block's attention module output (fp32 copies), captured by forward hooks, and the
    loss of predicting ``idx[:, 1:]`` from ``idx[:, :-1]``; under bf16 autocast on the
    tensors' device when ``bf16`` (as tests/test_attention_variants.py runs CPU autocast)."""
    outputs = []
    hooks = [block.attn.register_forward_hook(lambda module, args, out: outputs.append(out.detach().float()))
             for block in model.transformer.h]
    try:
        with torch.autocast(idx.device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = model.loss(idx[:, :-1], idx[:, 1:])
    finally:
        for hook in hooks:
            hook.remove()
    return outputs, loss


def layer_errors(outputs: list[torch.Tensor], reference: list[torch.Tensor]) -> list[tuple[float, float]]:
    """Per layer: (the norm of the difference over the reference's norm, the largest absolute
    difference over the reference's largest absolute value)."""
    assert len(outputs) == len(reference), f"{len(outputs)} layers against {len(reference)}"
    return [(float((o - r).norm() / r.norm()), float((o - r).abs().max() / r.abs().max()))
            for o, r in zip(outputs, reference)]


def mismatched_layers(outputs, reference, floor=None, rel_norm: float = BF16_REL_NORM,
                      rel_max: float = BF16_REL_MAX) -> dict:
    """{layer: (relative norm error, relative max error)} of the layers over their bound: the
    fixed bf16 bounds, or FLOOR_FACTOR x the layer's errors in ``floor`` (the eager path under
    the same autocast, from layer_errors) where that is larger. NaN is always over."""
    floor = floor or [(0.0, 0.0)] * len(outputs)
    return {layer: errors for layer, (errors, base) in enumerate(zip(layer_errors(outputs, reference), floor))
            if not errors[0] <= max(rel_norm, FLOOR_FACTOR * base[0])
            or not errors[1] <= max(rel_max, FLOOR_FACTOR * base[1])}


def compare_fast_path(name: str, device: str, fault=None, **sizes) -> tuple[dict, list, list, float, float]:
    """The variant's backend=auto GPT under bf16 autocast against the fp32 eager GPT of the same
    (sharpened) weights and tokens, per layer. ``fault(model)`` may plant an error in the fast
    model first. Returns (mismatched layers, the fast path's layer errors, the eager bf16 floor's,
    the fp32 loss, the fast loss)."""
    reference = sharpen(variant_gpt(name, "eager", device=device, **sizes))
    fast = same_weights(variant_gpt(name, "auto", device=device, **sizes), reference)
    if fault is not None:
        fault(fast)
    block = reference.block_size
    idx = torch.randint(0, 256, (2, block + 1), generator=torch.Generator().manual_seed(1)).to(device)
    with torch.no_grad():
        ref_out, ref_loss = attention_outputs(reference, idx, bf16=False)
        fast_out, fast_loss = attention_outputs(fast, idx, bf16=True)
        floor_out, _ = attention_outputs(reference, idx, bf16=True)
    floor = layer_errors(floor_out, ref_out)
    return (mismatched_layers(fast_out, ref_out, floor), layer_errors(fast_out, ref_out), floor,
            float(ref_loss), float(fast_loss))
