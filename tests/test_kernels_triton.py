"""The fused Triton kernels (outlier_lab/kernels/triton/) against the eager references, and the backend
selection that reaches them. Without a GPU the kernels run on CPU in Triton's interpreter:
tests/conftest.py sets TRITON_INTERPRET=1 before triton is first imported, which is when
triton decides (an env var set later, in this module, would come too late).

The reference of each kernel is its variant's own dense formula (outlier_lab/models/attention/), run
by the variant's ``attend`` with backend=eager, i.e. the causal query chunks of
outlier_lab/kernels/chunked.py (tests/test_kernels_chunked.py compares them with outlier_lab/kernels/naive.py).
"""

from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip("triton", reason="triton is not installed (pip install '.[triton]'): fused kernels untested")

import torch  # noqa: E402

from outlier_lab import kernels  # noqa: E402
from outlier_lab.kernels import naive  # noqa: E402
from outlier_lab.kernels import triton as triton_kernels  # noqa: E402
from outlier_lab.models.attention import build_attention, get_attention_class, registered_names  # noqa: E402
from outlier_lab.errors import ConfigError  # noqa: E402

if not torch.cuda.is_available() and not triton_kernels.interpreting():
    pytest.skip("no GPU and TRITON_INTERPRET is not on (tests/conftest.py turns it on unless it is set)",
                allow_module_level=True)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # on a GPU the compiled kernels are tested


# kernel -> (the variant that declares it, the options its tests use: its last declared
# test option set, the one that reaches the most branches, e.g. clipped softmax's upper clip)
VARIANTS = {
    cls.fused_kernel: (name, cls.test_options[-1])
    for name in registered_names() if (cls := get_attention_class(name)).fused_kernel
}
B, H = 2, 2


def qkv(t, d, dtype=torch.float32, seed=0):
    """Random q, k, v whose logits q.k/sqrt(d) have std ~2, so that they range over O(1-3)."""
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, t, d, generator=g) for _ in range(3))
    q, k = q * 1.4, k * 1.4
    return [x.to(DEVICE, dtype).requires_grad_() for x in (q, k, v)]


def eager_reference(name, q, k, v):
    """(o, probs, module) from the variant's attend with the eager backend."""
    variant, opts = VARIANTS[name]
    module = build_attention(variant, n_embd=H * q.size(-1), n_head=H, block_size=128, backend="eager", **opts)
    o, extras = module.attend(q, k, v, None, True)
    return o, extras["probs"], module


def test_every_kernel_has_a_variant_and_every_declared_kernel_exists():
    """outlier_lab/kernels/triton/<name>.py files and the variants' ``fused_kernel`` declarations agree,
    so no kernel goes untested and no variant names a missing kernel."""
    assert set(VARIANTS) == set(triton_kernels.KERNELS), (sorted(VARIANTS), sorted(triton_kernels.KERNELS))
    for name, function in triton_kernels.KERNELS.items():
        assert callable(getattr(triton_kernels, function)), f"outlier_lab/kernels/triton/{name}.py lacks {function}"


@pytest.mark.parametrize("d", [16, 32])
@pytest.mark.parametrize("t", [1, 37, 64, 100, 128])
@pytest.mark.parametrize("name", list(VARIANTS))
def test_kernel_matches_eager_reference(name, t, d):
    q, k, v = qkv(t, d)
    o_ref, probs, module = eager_reference(name, q, k, v)
    o = triton_kernels.fused_attention(name, q, k, v, **module.fused_params(t))
    torch.testing.assert_close(o, o_ref, atol=1e-4, rtol=1e-4)

    do = torch.randn(o.shape, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    got = torch.autograd.grad(o, (q, k, v), do)
    want = torch.autograd.grad(o_ref, (q, k, v), do)
    for label, g, w in zip("qkv", got, want):
        torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-4, msg=lambda m: f"d{label}: {m}")

    if t >= 37 and name != "sigmoid":  # the rectifier / clip branches are really exercised
        visible = naive.causal_mask(t, t, probs.device).expand_as(probs)
        assert (probs[visible] == 0).any(), f"{name}: no visible weight is exactly 0"
        assert (probs[visible] > 0).any()
    if name == "clipped_softmax":
        assert (probs == 1).any(), "the upper clip is never reached"


@pytest.mark.parametrize("name", list(VARIANTS))
def test_head_size_not_a_power_of_two(name):
    """d = 24: the tiles pad it to 32 with masked loads."""
    q, k, v = qkv(21, 24)
    o_ref, _, module = eager_reference(name, q, k, v)
    o = triton_kernels.fused_attention(name, q, k, v, **module.fused_params(21))
    torch.testing.assert_close(o, o_ref, atol=1e-4, rtol=1e-4)
    do = torch.randn(o.shape, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    for g, w in zip(torch.autograd.grad(o, (q, k, v), do), torch.autograd.grad(o_ref, (q, k, v), do)):
        torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-4)


def test_fp16_close_to_float32_reference():
    """Half precision inputs (tl.dot in fp16, fp32 accumulation), each kernel, loose tolerance."""
    for name in VARIANTS:
        q, k, v = qkv(40, 32, dtype=torch.float16)
        o = triton_kernels.fused_attention(name, q, k, v, **eager_reference(name, q, k, v)[2].fused_params(40))
        assert o.dtype == torch.float16
        qf, kf, vf = (x.detach().float().requires_grad_() for x in (q, k, v))
        o_ref, _, _ = eager_reference(name, qf, kf, vf)
        torch.testing.assert_close(o.float(), o_ref, atol=1e-2, rtol=1e-2)
        do = torch.randn(o.shape, generator=torch.Generator().manual_seed(1)).to(DEVICE)
        got = torch.autograd.grad(o, (q, k, v), do.half())
        want = torch.autograd.grad(o_ref, (qf, kf, vf), do)
        for g, w in zip(got, want):
            assert g.dtype == torch.float16
            torch.testing.assert_close(g.float(), w, atol=2e-2, rtol=2e-2)


def test_memory_is_linear_in_length():
    """Autograd keeps no (T, T) tensor for the fused path, only (B, H, T, d) and per-row ones."""
    t, d = 64, 16
    q, k, v = qkv(t, d)
    sizes = []

    def pack(x):
        sizes.append(x.numel())
        return x

    for name in VARIANTS:
        params = eager_reference(name, q, k, v)[2].fused_params(t)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
            triton_kernels.fused_attention(name, q, k, v, **params)
    assert sizes and max(sizes) <= B * H * t * d, sizes


@pytest.mark.parametrize("name", list(VARIANTS))
def test_module_with_triton_backend_matches_eager(name):
    """The whole variant module (projections, rope, non-contiguous head views) with backend=triton."""
    from outlier_lab.models.attention.base import rope_tables

    variant, opts = VARIANTS[name]
    c, t = 32, 37
    modules = []
    for backend in ("eager", "triton"):
        torch.manual_seed(0)
        module = build_attention(variant, n_embd=c, n_head=2, block_size=64, backend=backend, **opts)
        with torch.no_grad():
            for p in module.parameters():
                p.normal_(0, 0.25)
        modules.append(module.to(DEVICE))
    x = torch.randn(B, t, c, generator=torch.Generator().manual_seed(2)).to(DEVICE)
    w = torch.randn(B, t, c, generator=torch.Generator().manual_seed(3)).to(DEVICE)
    rope = tuple(tab.to(DEVICE) for tab in rope_tables(t, c // 2))
    outs = []
    for module in modules:
        y = module(x, rope)
        (y * w).sum().backward()
        outs.append(y)
    torch.testing.assert_close(outs[1], outs[0], atol=1e-4, rtol=1e-4)
    for (pname, pe), pt in zip(modules[0].named_parameters(), modules[1].parameters()):
        torch.testing.assert_close(pt.grad, pe.grad, atol=1e-4, rtol=1e-4, msg=lambda m: f"grad of {pname}: {m}")


def test_module_under_bf16_autocast():
    """Mixed dtypes (rotary q, k in fp32, v in bf16) run in the autocast dtype, like eager."""
    from outlier_lab.models.attention.base import rope_tables

    x = torch.randn(B, 20, 32, device=DEVICE)
    rope = tuple(tab.to(DEVICE) for tab in rope_tables(20, 16))
    outs = []
    for backend in ("eager", "triton"):
        torch.manual_seed(0)
        module = build_attention("softpick", n_embd=32, n_head=2, block_size=32, backend=backend).to(DEVICE)
        with torch.autocast(DEVICE, dtype=torch.bfloat16):
            y = module(x, rope)
        y.float().sum().backward()
        assert all(torch.isfinite(p.grad).all() for p in module.parameters())
        outs.append(y)
    assert outs[1].dtype == outs[0].dtype
    torch.testing.assert_close(outs[1].float(), outs[0].float(), atol=3e-2, rtol=3e-2)


# -- backend selection ----------------------------------------------------------------------------


def test_forced_triton_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(ConfigError, match=r"needs CUDA tensors, got cpu \(set TRITON_INTERPRET=1"):
        kernels.select_backend("triton", "cpu", torch.float32, family="elementwise", fused=True)
    module = build_attention("softpick", n_embd=32, n_head=2, block_size=16, backend="triton")
    with pytest.raises(ConfigError, match="needs CUDA tensors"):
        module(torch.randn(1, 8, 32))


def test_forced_triton_under_the_interpreter_runs_on_cpu(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert kernels.select_backend("triton", "cpu", torch.float32, family="elementwise", fused=True) == "triton"


def test_triton_not_installed(monkeypatch):
    monkeypatch.setattr(triton_kernels, "triton_available", lambda: False)
    monkeypatch.setattr(triton_kernels, "import_error", lambda: "ModuleNotFoundError: No module named 'triton'")
    with pytest.raises(ConfigError, match="triton is not installed"):
        kernels.select_backend("triton", "cuda", torch.bfloat16, family="elementwise", fused=True)
    assert kernels.select_backend("auto", "cuda", torch.bfloat16, family="elementwise", fused=True) == "eager"


@pytest.mark.parametrize("family", ["softmax", "slot"])
def test_triton_refused_for_families_without_kernels(family):
    with pytest.raises(ConfigError, match=rf"cannot run {family} attention; choose one of auto, .*eager"):
        kernels.select_backend("triton", "cuda", torch.bfloat16, family=family)
    with pytest.raises(ConfigError, match="choose one of auto, flash, sdpa, eager"):
        build_attention("softmax", n_embd=32, n_head=2, block_size=16, backend="triton")(torch.randn(1, 4, 32))


def test_forced_triton_without_a_fused_kernel():
    q = torch.randn(1, 2, 8, 16)
    with pytest.raises(ConfigError, match="no fused triton kernel"):
        kernels.elementwise_attention(q, q, q, lambda s, mask: torch.sigmoid(s), backend="triton")


def test_auto_choices():
    select = kernels.select_backend
    assert select("auto", "cpu", torch.float32, family="elementwise", fused=True) == "eager"  # even interpreting
    assert select("auto", "cuda", torch.bfloat16, family="elementwise", fused=True) == "triton"
    assert select("auto", "cuda", torch.bfloat16, family="elementwise", fused=False) == "eager"
    assert select("auto", "cuda", torch.float64, family="elementwise", fused=True) == "eager"
    assert select("auto", "cuda", torch.bfloat16, need_probs=True, family="elementwise", fused=True) == "eager"
    assert select("triton", "cpu", torch.float32, need_probs=True, family="elementwise", fused=True) == "eager"


def test_probe_mode_runs_eager_with_triton_forced():
    module = build_attention("softpick", n_embd=32, n_head=2, block_size=16, backend="triton").to(DEVICE)
    x = torch.randn(2, 9, 32, device=DEVICE)
    with torch.no_grad():
        y = module(x)
        module.probe = True
        y_probe = module(x)
    assert module.probe_out["probs"].shape == (2, 2, 9, 9)
    torch.testing.assert_close(y_probe, y, atol=1e-5, rtol=1e-5)


def test_dropout(monkeypatch):
    q = torch.randn(1, 2, 8, 16, device=DEVICE)
    fused = ("sigmoid", {"bias": 0.0})
    with pytest.raises(ConfigError, match="no attention dropout"):
        kernels.elementwise_attention(q, q, q, torch.sigmoid, fused=fused, backend="triton", dropout_p=0.1)
    # auto would pick triton on CUDA; with dropout it falls back to eager (the same random mask)
    monkeypatch.setattr(kernels, "select_backend", lambda *args, **kwargs: "triton")
    probs = lambda s, mask: torch.sigmoid(s)  # noqa: E731
    torch.manual_seed(0)
    o, _ = kernels.elementwise_attention(q, q, q, probs, fused=fused, backend="auto", dropout_p=0.5)
    torch.manual_seed(0)
    o_eager, _ = naive.elementwise_attention(q, q, q, probs, dropout_p=0.5)
    torch.testing.assert_close(o, o_eager)


def test_import_kernels_without_triton():
    """`outlier_lab.kernels` and the auto backend work where triton is not importable."""
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch\nfrom outlier_lab import kernels\n"
        "assert not kernels.triton_kernels.triton_available()\n"
        "assert kernels.select_backend('auto', 'cuda', torch.bfloat16, family='elementwise', fused=True) == 'eager'\n"
        "from outlier_lab.models.attention import build_attention\n"
        "build_attention('softpick', n_embd=16, n_head=2, block_size=8)(torch.randn(1, 4, 16))\n"
        "try:\n"
        "    kernels.select_backend('triton', 'cuda', torch.bfloat16, family='elementwise', fused=True)\n"
        "except Exception as err:\n"
        "    assert 'triton is not installed' in str(err), err\n"
        "else:\n"
        "    raise AssertionError('forced triton without triton did not raise')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=_repo_root())
    assert result.returncode == 0, result.stderr


def _repo_root() -> str:
    from pathlib import Path

    return str(Path(__file__).resolve().parents[1])
