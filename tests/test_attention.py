"""The attention registry, the backend dispatch in outlier_lab/kernels/, and the explicit scale's
placement. Every variant's formula is checked in test_attention_variants.py."""

from __future__ import annotations

import importlib
import math
import sys

import pytest
import torch

from outlier_lab import kernels
from outlier_lab.models.attention import build_attention, registered_names
from outlier_lab.errors import ConfigError

B, T, C, H = 2, 7, 24, 3


def reference_softmax_heads(module, x):
    """o^h = softmax(q k^T / sqrt(d) + causal mask) v, per head, from the module's weights."""
    d = C // H
    qkv = x @ module.c_attn.weight.T + module.c_attn.bias
    q, k, v = qkv[..., :C], qkv[..., C : 2 * C], qkv[..., 2 * C :]
    outs = []
    for h in range(H):
        sl = slice(h * d, (h + 1) * d)
        s = q[..., sl] @ k[..., sl].transpose(-1, -2) / math.sqrt(d)
        s = s + torch.full((T, T), float("-inf"), dtype=x.dtype).triu(1)
        outs.append(torch.softmax(s, dim=-1) @ v[..., sl])
    return outs  # H tensors of (B, T, d)


def project(module, heads):
    return torch.cat(heads, dim=-1) @ module.c_proj.weight.T + module.c_proj.bias


def make(name, **kwargs):
    torch.manual_seed(0)
    module = build_attention(name, n_embd=C, n_head=H, block_size=T, **kwargs).double()
    with torch.no_grad():  # random, not init values, so that every parameter matters
        for p in module.parameters():
            p.normal_(0, 0.3)
    return module


def test_unknown_variant_lists_registered_names():
    with pytest.raises(ConfigError) as err:
        build_attention("nope", n_embd=C, n_head=H, block_size=T)
    for name in registered_names():
        assert name in str(err.value)


def test_heads_must_divide_width():
    with pytest.raises(ConfigError, match="multiple of n_head"):
        build_attention("softmax", n_embd=10, n_head=3, block_size=T)


def test_explicit_scale_is_one_at_init_and_gets_gradients():
    from outlier_lab.models.gpt import GPT

    torch.manual_seed(0)
    model = GPT(vocab_size=64, block_size=16, n_layer=2, n_head=4, n_embd=32, attention={"name": "explicit_scale"})
    attn = model.transformer.h[0].attn
    attn.probe = True
    idx = torch.randint(0, 64, (3, 16))
    model.loss(idx, idx).backward()
    scale = attn.probe_out["scale"]
    assert scale.shape == (3, 16, 4)
    # 2 sigmoid(W x) with W ~ N(0, 0.02): exactly 1 on average, within a few percent per entry
    assert abs(scale.mean().item() - 1) < 0.02 and (scale - 1).abs().max() < 0.3
    for p in attn.context_scale.parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_scale_multiplies_heads_before_output_projection():
    """Zeroing the scale of head h must remove exactly head h's slice before c_proj."""
    module = make("explicit_scale")
    x = torch.randn(B, T, C, dtype=torch.float64)
    with torch.no_grad():
        module.context_scale[0].weight.zero_()
        module.context_scale[0].bias.copy_(torch.tensor([-1e4, 0.0, 0.0]))  # S = (0, 1, 1)
    d = C // H
    heads = reference_softmax_heads(module, x)
    expected = torch.cat([torch.zeros_like(heads[0])] + heads[1:], dim=-1) @ module.c_proj.weight.T + module.c_proj.bias
    torch.testing.assert_close(module(x), expected, rtol=0, atol=1e-10)
    assert d == 8


# -- backend dispatch ---------------------------------------------------------------------


def test_sdpa_and_eager_agree_float32():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 33, 16) for _ in range(3))
    o_sdpa, p = kernels.softmax_attention(q, k, v, backend="sdpa")
    o_eager, _ = kernels.softmax_attention(q, k, v, backend="eager")
    assert p is None
    torch.testing.assert_close(o_sdpa, o_eager, rtol=1e-5, atol=1e-5)


def test_backend_selection_rules(monkeypatch):
    monkeypatch.setattr(kernels.flash, "flash_available", lambda: True)
    assert kernels.select_backend("auto", "cuda", torch.bfloat16) == "flash"
    assert kernels.select_backend("auto", "cuda", torch.float32) == "sdpa"
    assert kernels.select_backend("auto", "cpu", torch.bfloat16) == "sdpa"
    assert kernels.select_backend("auto", "cuda", torch.bfloat16, need_probs=True) == "eager"
    monkeypatch.setattr(kernels.flash, "flash_available", lambda: False)
    assert kernels.select_backend("auto", "cuda", torch.bfloat16) == "sdpa"
    with pytest.raises(ConfigError, match="not installed"):
        kernels.select_backend("flash", "cuda", torch.bfloat16)
    with pytest.raises(ConfigError, match="eager"):
        kernels.select_backend("fastest", "cpu", torch.float32)


class _BrokenFinder:
    """Makes `import flash_attn` fail the way a CUDA/ABI mismatch does (OSError, not ImportError)."""

    def find_spec(self, name, path=None, target=None):
        if name == "flash_attn" or name.startswith("flash_attn."):
            raise OSError("libcudart.so.12: cannot open shared object file")
        return None


def test_broken_flash_attn_install_falls_back_silently(monkeypatch):
    monkeypatch.delitem(sys.modules, "flash_attn", raising=False)
    monkeypatch.setattr(sys, "meta_path", [_BrokenFinder(), *sys.meta_path])
    try:
        importlib.reload(kernels.flash)
        assert not kernels.flash.flash_available()
        q = torch.randn(1, 2, 5, 8)
        o, _ = kernels.softmax_attention(q, q, q)
        assert o.shape == q.shape
    finally:
        monkeypatch.undo()
        importlib.reload(kernels.flash)
