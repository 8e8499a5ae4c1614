"""The chunked eager path of the elementwise family (outlier_lab/kernels/chunked.py) against the plain
reference (kernels.naive.elementwise_attention), for every elementwise variant's probs_fn."""

from __future__ import annotations

import pytest
import torch

from outlier_lab import kernels
from outlier_lab.kernels import chunked, naive
from outlier_lab.models.attention import build_attention, get_attention_class, registered_names
from outlier_lab.models.compile import quiet_lru_cache_notice

# (variant, options): every elementwise variant with each of its declared test option sets
CASES = [
    (name, options)
    for name in registered_names() if (cls := get_attention_class(name)).family == "elementwise"
    for options in cls.test_options
]
IDS = [f"{name}-{options}" for name, options in CASES]


def variant_probs_fn(name, options, t=16):
    """The probs_fn the variant hands to kernels.elementwise_attention (its attend, captured)."""
    module = build_attention(name, n_embd=16, n_head=2, block_size=64, **options)
    captured = {}

    def capture(q, k, v, probs_fn, **kwargs):
        captured["fn"] = probs_fn
        return naive.elementwise_attention(q, k, v, probs_fn)[0], None

    mp = pytest.MonkeyPatch()
    mp.setattr(kernels, "elementwise_attention", capture)
    try:
        module(torch.randn(1, t, 16))
    finally:
        mp.undo()
    return captured["fn"]


def qkv(t, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    # logits of a few units: both signs and every clip of every variant are reached
    return [(2 * torch.randn(2, 3, t, d, generator=g)).requires_grad_() for _ in range(3)]


def forward_backward(fn, q, k, v):
    o = fn(q, k, v)
    grad_o = torch.randn(o.shape, generator=torch.Generator().manual_seed(1))
    grads = torch.autograd.grad(o, (q, k, v), grad_o)
    return o, grads


@pytest.mark.parametrize("t, chunks", [(1, None), (1, 4), (50, 3), (50, 7), (37, 37), (200, None)])
@pytest.mark.parametrize("name, options", CASES, ids=IDS)
def test_chunked_matches_naive(name, options, t, chunks):
    """Outputs and gradients of q, k, v, at T not a multiple of the chunk size, and T = 1."""
    probs_fn = variant_probs_fn(name, options)
    q, k, v = qkv(t)
    o_ref, g_ref = forward_backward(lambda q, k, v: naive.elementwise_attention(q, k, v, probs_fn)[0], q, k, v)
    o, g = forward_backward(lambda q, k, v: chunked.elementwise_attention(q, k, v, probs_fn, chunks=chunks), q, k, v)
    torch.testing.assert_close(o, o_ref, atol=1e-5, rtol=1e-5)
    for got, want, which in zip(g, g_ref, "qkv"):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4, msg=lambda m: f"grad {which}: {m}")


def test_chunk_count():
    """Unchunked below 2 * MIN_CHUNK rows (the overhead would outweigh the saving), then one
    chunk per MIN_CHUNK rows up to MAX_CHUNKS."""
    assert chunked.num_chunks(1) == chunked.num_chunks(2 * chunked.MIN_CHUNK - 1) == 1
    assert chunked.num_chunks(2 * chunked.MIN_CHUNK) == 2
    assert chunked.num_chunks(100_000) == chunked.MAX_CHUNKS


def test_backend_eager_runs_chunked_unless_probs_are_asked_for(monkeypatch):
    """The fast eager path is chunked; probes and probs_transform get the full P from the reference."""
    calls = []
    real = chunked.elementwise_attention
    monkeypatch.setattr(chunked, "elementwise_attention", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    probs_fn = variant_probs_fn("softpick", {})
    q, k, v = qkv(200)
    o, p = kernels.elementwise_attention(q, k, v, probs_fn, backend="eager")
    assert p is None and calls == [1]
    o_probe, p = kernels.elementwise_attention(q, k, v, probs_fn, backend="eager", return_probs=True)
    assert p.shape == (2, 3, 200, 200) and calls == [1]
    torch.testing.assert_close(o, o_probe, atol=1e-5, rtol=1e-5)
    o_half, p = kernels.elementwise_attention(q, k, v, probs_fn, backend="eager", probs_transform=lambda p: p / 2)
    assert p is None and calls == [1]
    torch.testing.assert_close(o_half, o_probe / 2, atol=1e-5, rtol=1e-5)


def test_dropout_per_chunk():
    """Dropout is drawn per chunk: rows are kept with probability 1 - p and rescaled, so the
    mean over draws is the output without dropout; below the chunking threshold it is the
    reference's very draw."""
    probs_fn = variant_probs_fn("sigmoid", {})
    q, k, v = (x.detach() for x in qkv(130))
    assert chunked.num_chunks(130) == 2
    o = chunked.elementwise_attention(q, k, v, probs_fn)
    draws = torch.stack([chunked.elementwise_attention(q, k, v, probs_fn, dropout_p=0.5) for _ in range(400)])
    assert not torch.equal(draws[0], o) and not torch.equal(draws[0], draws[1])
    assert (draws.mean(0) - o).abs().mean() < 0.1 * o.abs().mean()
    q, k, v = (x[..., :20, :] for x in (q, k, v))
    torch.manual_seed(3)
    o = chunked.elementwise_attention(q, k, v, probs_fn, dropout_p=0.5)
    torch.manual_seed(3)
    torch.testing.assert_close(o, naive.elementwise_attention(q, k, v, probs_fn, dropout_p=0.5)[0])


@pytest.mark.parametrize("name", sorted({name for name, _ in CASES}))
def test_one_graph_under_dynamo(name):
    """torch.compile traces the chunk loop whole (no graph break); the eager backend checks the
    tracing without paying for inductor's C++ compilation."""
    quiet_lru_cache_notice()
    torch._dynamo.reset()
    torch.manual_seed(0)
    module = build_attention(name, n_embd=16, n_head=2, block_size=200)
    x = torch.randn(2, 200, 16)
    compiled = torch.compile(module, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), module(x), atol=1e-5, rtol=1e-5)
    torch._dynamo.reset()
