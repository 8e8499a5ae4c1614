"""The CUDA paths against their eager references: every variant's backend=auto GPT under
bf16 autocast, flash-attn softmax, compiled FlexAttention for the slot family, and
compile=true. Marked ``gpu``: they skip without CUDA, and benchmarks/gpu_check.py runs them
(with tests/test_kernels_triton.py, whose kernels are compiled for CUDA there)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from outlier_lab.kernels import flash, slot
from outlier_lab.models.attention import get_attention_class, registered_names
from outlier_lab.models.compile import CompiledLoss
from outlier_lab.models.gpt import GPT

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
B, H, T, D = 2, 4, 256, 64


def gpt(name: str, backend: str, seed: int = 0, device: str = "cuda") -> GPT:
    """Two layers of the variant with its last test options (the most branches), minus the
    layer index, which the GPT sets per block."""
    torch.manual_seed(seed)
    options = {k: v for k, v in get_attention_class(name).test_options[-1].items() if k != "layer_idx"}
    attention = {"name": name, **options, "backend": backend}
    return GPT(vocab_size=256, n_layer=2, n_embd=H * D, n_head=H, block_size=T, attention=attention).to(device)


def loss_and_grads(model: GPT, x, y, autocast: bool):
    model.zero_grad()
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        loss = model.loss(x, y)
    loss.backward()
    return loss.detach().float(), torch.cat([p.grad.flatten().float() for p in model.parameters()])


@pytest.mark.parametrize("name", registered_names())
def test_every_variant_on_auto_in_bf16_matches_eager_fp32(name):
    """The fast path a GPU run takes (flash / Flex / Triton / SDPA under bf16 autocast)
    against the eager reference in fp32: loss within bf16 noise, gradients aligned."""
    x, y = (torch.randint(0, 256, (B, T), device="cuda") for _ in range(2))
    fast, fast_grads = loss_and_grads(gpt(name, "auto"), x, y, autocast=True)
    ref, ref_grads = loss_and_grads(gpt(name, "eager"), x, y, autocast=False)
    assert torch.isfinite(fast) and abs(fast - ref) < 0.02 * ref
    assert F.cosine_similarity(fast_grads, ref_grads, dim=0) > 0.99


@pytest.mark.skipif(not flash.flash_available(), reason="flash-attn is not installed")
def test_flash_softmax_matches_the_fp32_reference():
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(B, H, T, D, device="cuda", generator=g) for _ in range(3))
    reference = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    out = flash.softmax_attention(*(t.bfloat16() for t in (q, k, v)))
    torch.testing.assert_close(out.float(), reference, atol=2e-2, rtol=0)


@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-4), (torch.bfloat16, 2e-2)])
def test_compiled_flex_slot_matches_the_augmented_key_sdpa(dtype, atol):
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(B, H, T, D, device="cuda", generator=g) for _ in range(3))
    slot_key, slot_value = (torch.randn(1, H, 1, D, device="cuda", generator=g) for _ in range(2))
    slot_bias = torch.randn(1, H, 1, 1, device="cuda", generator=g)
    args = (slot_key, slot_bias, slot_value)
    o_ref, pi_ref = slot.sdpa_slot_attention(q, k, v, *args)  # tested against the dense formula on CPU
    o, pi = slot.flex_slot_attention(*(t.to(dtype) for t in (q, k, v)), *(t.to(dtype) for t in args))
    torch.testing.assert_close(o.float(), o_ref, atol=atol, rtol=0)
    torch.testing.assert_close(pi.float(), pi_ref, atol=atol, rtol=0)


@pytest.mark.parametrize("name", ["softmax", "explicit_scale", "softpick", "sink"])
def test_compiled_loss_matches_eager_on_cuda(name):
    model = gpt(name, "auto")
    x, y = (torch.randint(0, 256, (B, T), device="cuda") for _ in range(2))
    compiled = CompiledLoss(model, f"attention={name}")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        fast, eager = compiled(x, y), model.loss(x, y)
    assert compiled.compiled is not None, "fell back to eager"
    assert abs(float(fast) - float(eager)) < 0.01 * float(eager)
