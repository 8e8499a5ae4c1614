"""Every registered attention variant against an independent reference of its DESIGN.md
formula (section 2), plus causality, gradients, stability, init values, null mass, fast
paths and config errors.

The references below use plain torch ops on the module's parameters only: they never call
the module's helpers nor ``kernels``. Every test is parametrized over
``registered_names()``, so a new variant is picked up by itself and fails here until it
gets a reference in ``REFERENCES`` (and a row in the tables it needs).
"""

from __future__ import annotations

import math
import re

import pytest
import torch

from models.attention import build_attention, registered_names
from models.attention.base import rope_tables
from errors import ConfigError

B, T, C, H = 2, 8, 32, 4
D = C // H  # head size
BLOCK = 32  # block_size != T, so that "sequence" and "block_size" lengths differ

NAMES = registered_names()

# Option settings tested beside the defaults ({}).
OPTIONS = {
    # the fixed bias is `logit_bias`: `bias` is the base class's Linear-bias flag
    "sigmoid": [{}, {"bias_length": "block_size"}, {"logit_bias": -1.0}],
    "clipped_softmax": [{}, {"alpha": 4.0}, {"alpha": 40.0}, {"gamma": -0.1, "zeta": 1.1}],
    "gated": [{}, {"gate_input": "full"}],
    "gated_g1": [{}, {"granularity": "headwise"}],
    "softpick": [{}, {"eps": 1e-2}],
    "differential": [{}, {"layer_idx": 2}],
}
CASES = [(name, opts) for name in NAMES for opts in OPTIONS.get(name, [{}])]


def case_id(case):
    name, opts = case
    return "-".join([name, *(f"{k}={v}" for k, v in opts.items())])


CASE_IDS = [case_id(c) for c in CASES]

# Rows of probs that may sum to less than 1 (the explicit "attend to nothing").
NULL_MASS_VARIANTS = {"softmax1", "sink", "softpick", "clipped_softmax", "attn_bias", "ca_bias", "sigmoid"}
# Rows of probs that are a distribution over the real keys.
ROWS_SUM_TO_ONE = {"softmax", "explicit_scale", "v_bias", "gated", "gated_g1"}


# -- shared reference pieces (plain torch) ----------------------------------------------------


def linear(lin, x):
    return x @ lin.weight.T + (0 if lin.bias is None else lin.bias)


def split_heads(t):
    """(B, T, H*D) -> (B, H, T, D), head h = channels h*D:(h+1)*D."""
    return torch.stack([t[..., h * D : (h + 1) * D] for h in range(t.size(-1) // D)], dim=1)


def merge_heads(o):
    """(B, H', T, w) -> (B, T, H'*w), head h -> channels h*w:(h+1)*w."""
    return torch.cat([o[:, h] for h in range(o.size(1))], dim=-1)


def rotate(t, rope):
    cos, sin = rope
    t1, t2 = t[..., : D // 2], t[..., D // 2 :]
    return t * cos + torch.cat([-t2, t1], dim=-1) * sin


def qkv(module, x, rope):
    out = linear(module.c_attn, x)
    q, k, v = (split_heads(out[..., i * C : (i + 1) * C]) for i in range(3))
    if rope is not None:
        q, k = rotate(q, rope), rotate(k, rope)
    return q, k, v


def logits(q, k):
    return q @ k.transpose(-1, -2) / math.sqrt(q.size(-1))


def visible(t):
    """(t, t) float mask: 1 where key j <= query i."""
    return torch.ones(t, t, dtype=torch.float64).tril()


def causal_softmax(s):
    t = s.size(-1)
    return torch.softmax(s.masked_fill(visible(t) == 0, float("-inf")), dim=-1)


def causal_exp(s):
    """e^{s_ij} on visible entries, 0 elsewhere (naive: the tests keep logits moderate)."""
    return torch.exp(s) * visible(s.size(-1)).to(s.dtype)


def head_scale(o, g):
    """o (B, H, T, w) times a per-(token, head) factor g (B, T, H)."""
    return o * g.transpose(1, 2).unsqueeze(-1)


def finish(module, o, extra=None):
    y = merge_heads(o)
    if extra is not None:
        y = y + extra
    return linear(module.c_proj, y)


# -- one reference per variant: (module, x, rope, opts) -> {"out", "probs", ...} ------------


def ref_softmax(module, x, rope, opts):
    q, k, v = qkv(module, x, rope)
    p = causal_softmax(logits(q, k))
    return {"out": finish(module, p @ v), "probs": p}


def ref_v_bias(module, x, rope, opts):
    q, k, v = qkv(module, x, rope)
    p = causal_softmax(logits(q, k))
    return {"out": finish(module, p @ v, extra=module.v_bias), "probs": p}


def _slot(module, x, rope):
    """Shared by ca_bias and attn_bias: e^{s}, the slot's e^{q.k'/sqrt d}, and v."""
    q, k, v = qkv(module, x, rope)
    e = causal_exp(logits(q, k))
    e_slot = torch.exp(q @ module.k_bias.transpose(-1, -2) / math.sqrt(D))  # (B, H, T, 1)
    return e, e_slot, v


def ref_ca_bias(module, x, rope, opts):
    e, e_slot, v = _slot(module, x, rope)
    denom = e_slot + e.sum(-1, keepdim=True)
    pi = e_slot / denom
    o = (e / e.sum(-1, keepdim=True)) @ v + pi * module.v_bias  # full softmax(s) V plus pi v'
    return {"out": finish(module, o), "probs": e / denom, "null_mass": pi.squeeze(-1)}


def ref_attn_bias(module, x, rope, opts):
    e, e_slot, v = _slot(module, x, rope)
    denom = e_slot + e.sum(-1, keepdim=True)
    p, pi = e / denom, e_slot / denom  # softmax over [s_i, q_i.k'/sqrt d]
    return {"out": finish(module, p @ v + pi * module.v_bias), "probs": p, "null_mass": pi.squeeze(-1)}


def ref_explicit_scale(module, x, rope, opts):
    q, k, v = qkv(module, x, rope)
    p = causal_softmax(logits(q, k))
    scale = 2 * torch.sigmoid(linear(module.context_scale[0], x))  # (B, T, H)
    return {"out": finish(module, head_scale(p @ v, scale)), "probs": p, "scale": scale}


def ref_sigmoid(module, x, rope, opts):
    q, k, v = qkv(module, x, rope)
    n = x.size(1) if opts.get("bias_length", "sequence") == "sequence" else module.block_size
    b = opts["logit_bias"] if opts.get("logit_bias") is not None else -math.log(n)
    s = logits(q, k)
    p = torch.sigmoid(s + b) * visible(s.size(-1)).to(s.dtype)
    return {"out": finish(module, p @ v), "probs": p, "null_mass": 1 - p.sum(-1)}


def ref_softmax1(module, x, rope, opts):
    q, k, v = qkv(module, x, rope)
    e = causal_exp(logits(q, k))
    p = e / (1 + e.sum(-1, keepdim=True))
    return {"out": finish(module, p @ v), "probs": p, "null_mass": 1 - p.sum(-1)}


def ref_sink(module, x, rope, opts):
    q, k, v = qkv(module, x, rope)
    e = causal_exp(logits(q, k))
    p = e / (torch.exp(module.sinks).view(1, H, 1, 1) + e.sum(-1, keepdim=True))
    return {"out": finish(module, p @ v), "probs": p, "null_mass": 1 - p.sum(-1)}


def ref_clipped_softmax(module, x, rope, opts):
    q, k, v = qkv(module, x, rope)
    zeta = opts.get("zeta", 1.0)
    gamma = opts.get("gamma")
    if gamma is None:
        gamma = -opts.get("alpha", 12.0) / module.block_size
    s = logits(q, k)
    p = torch.clamp((zeta - gamma) * causal_softmax(s) + gamma, 0, 1) * visible(s.size(-1)).to(s.dtype)
    return {"out": finish(module, p @ v), "probs": p, "null_mass": 1 - p.sum(-1)}


def ref_gated(module, x, rope, opts):
    q, k, v = qkv(module, x, rope)
    p = causal_softmax(logits(q, k))
    if opts.get("gate_input", "head") == "head":
        gate = torch.stack(
            [x[..., h * D : (h + 1) * D] @ module.gate_weight[h] + module.gate_bias[h] for h in range(H)], dim=-1
        ).sigmoid()
    else:
        gate = torch.sigmoid(linear(module.gate_proj, x))
    return {"out": finish(module, head_scale(p @ v, gate)), "probs": p, "gate": gate}


def ref_gated_g1(module, x, rope, opts):
    q, k, v = qkv(module, x, rope)
    p = causal_softmax(logits(q, k))
    g = torch.sigmoid(x @ module.gate_proj.weight.T)
    if opts.get("granularity", "elementwise") == "elementwise":
        o = (p @ v) * split_heads(g)
        gate = g.reshape(*g.shape[:2], H, D)
    else:
        o = head_scale(p @ v, g)
        gate = g.unsqueeze(-1)
    return {"out": finish(module, o), "probs": p, "gate": gate}


def ref_softpick(module, x, rope, opts):
    q, k, v = qkv(module, x, rope)
    s = logits(q, k)
    e = (torch.exp(s) - 1) * visible(s.size(-1)).to(s.dtype)
    p = torch.relu(e) / (e.abs().sum(-1, keepdim=True) + opts.get("eps", 1e-6))
    return {"out": finish(module, p @ v), "probs": p, "null_mass": 1 - p.sum(-1)}


def differential_lambda(module):
    lam_init = 0.8 - 0.6 * math.exp(-0.3 * module.layer_idx)
    lam = (
        torch.exp(module.lambda_q1 @ module.lambda_k1) - torch.exp(module.lambda_q2 @ module.lambda_k2) + lam_init
    )
    return lam, lam_init


def ref_differential(module, x, rope, opts):
    q, k, v = qkv(module, x, rope)
    assert module.layer_idx == opts.get("layer_idx", 0)
    lam, lam_init = differential_lambda(module)
    a1 = causal_softmax(logits(q[:, 0::2], k[:, 0::2]))
    a2 = causal_softmax(logits(q[:, 1::2], k[:, 1::2]))
    v2 = torch.cat([v[:, 0::2], v[:, 1::2]], dim=-1)  # group g: v heads 2g and 2g+1, 2D wide
    p = a1 - lam * a2
    o = p @ v2
    o = o / torch.sqrt(o.pow(2).mean(-1, keepdim=True) + 1e-5) * module.subln.weight
    return {"out": finish(module, o * (1 - lam_init)), "probs": p}


REFERENCES = {
    "softmax": ref_softmax,
    "v_bias": ref_v_bias,
    "ca_bias": ref_ca_bias,
    "attn_bias": ref_attn_bias,
    "explicit_scale": ref_explicit_scale,
    "sigmoid": ref_sigmoid,
    "softmax1": ref_softmax1,
    "sink": ref_sink,
    "clipped_softmax": ref_clipped_softmax,
    "gated": ref_gated,
    "gated_g1": ref_gated_g1,
    "softpick": ref_softpick,
    "differential": ref_differential,
}


def reference(name):
    if name not in REFERENCES:
        pytest.fail(
            f"attention variant {name!r} is registered but has no reference in "
            f"tests/test_attention_variants.py::REFERENCES; write one from its DESIGN.md formula"
        )
    return REFERENCES[name]


# -- building test modules ------------------------------------------------------------------


def randomize(module, std=0.3):
    with torch.no_grad():  # random, not init values, so that every parameter matters
        for p in module.parameters():
            p.normal_(0, std)
    return module


def make(name, dtype=torch.float64, seed=0, **opts):
    torch.manual_seed(seed)
    module = build_attention(name, n_embd=C, n_head=H, block_size=BLOCK, **opts)
    return randomize(module).to(dtype)


def inputs(dtype=torch.float64, seed=1, rope=False, t=T):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, t, C, generator=g, dtype=torch.float64).to(dtype)
    tables = tuple(tab.to(dtype) for tab in rope_tables(t, D)) if rope else None
    return x, tables


# -- 1. formula ------------------------------------------------------------------------------


@pytest.mark.parametrize("use_rope", [False, True], ids=["norope", "rope"])
@pytest.mark.parametrize("backend", ["eager", "auto"])
@pytest.mark.parametrize("name,opts", CASES, ids=CASE_IDS)
def test_matches_reference_float64(name, opts, backend, use_rope):
    ref = reference(name)
    module = make(name, backend=backend, **opts)
    x, rope = inputs(rope=use_rope)
    with torch.no_grad():
        torch.testing.assert_close(module(x, rope), ref(module, x, rope, opts)["out"], rtol=0, atol=1e-10)


@pytest.mark.parametrize("backend", ["eager", "auto"])
@pytest.mark.parametrize("name,opts", CASES, ids=CASE_IDS)
def test_gradients_match_reference_float64(name, opts, backend):
    """Backward too: gradients of the input and every parameter equal autograd through the reference
    (this is what checks hand-written backward passes)."""
    ref = reference(name)
    module = make(name, backend=backend, **opts)
    x, rope = inputs(rope=True)
    x.requires_grad_(True)
    weight = torch.randn(B, T, C, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    params = [x, *module.parameters()]
    got = torch.autograd.grad((module(x, rope) * weight).sum(), params)
    want = torch.autograd.grad((ref(module, x, rope, opts)["out"] * weight).sum(), params)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-9)


@pytest.mark.parametrize("name,opts", CASES, ids=CASE_IDS)
def test_probe_matches_reference_and_normal_mode(name, opts):
    """Probe mode: same output, and probs / null_mass / scale / gate equal the reference's."""
    ref = reference(name)
    module = make(name, **opts)
    x, rope = inputs(rope=True)
    with torch.no_grad():
        y = module(x, rope)
        module.probe = True
        y_probe = module(x, rope)
        expected = ref(module, x, rope, opts)
    torch.testing.assert_close(y_probe, y, rtol=0, atol=1e-10)
    for key, want in expected.items():
        if key == "out":
            continue
        assert key in module.probe_out, f"{name}: probe_out lacks {key!r} (has {sorted(module.probe_out)})"
        got = module.probe_out[key]
        if key == "gate":  # gated_g1 headwise may be (B, T, H) or (B, T, H, 1)
            got = got.reshape(want.shape)
        assert got.shape == want.shape, f"{name}: probe {key} has shape {tuple(got.shape)}, expected {tuple(want.shape)}"
        torch.testing.assert_close(got, want, rtol=0, atol=1e-10, msg=lambda m: f"{name} probe {key!r}: {m}")


# -- 2. causality ----------------------------------------------------------------------------


@pytest.mark.parametrize("name,opts", CASES, ids=CASE_IDS)
def test_causal(name, opts):
    module = make(name, **opts)
    x, rope = inputs(rope=True)
    t = 3
    x2 = x.clone()
    x2[:, t + 1 :] = torch.randn_like(x2[:, t + 1 :])
    with torch.no_grad():
        y, y2 = module(x, rope), module(x2, rope)
    torch.testing.assert_close(y2[:, : t + 1], y[:, : t + 1], rtol=0, atol=1e-12)
    assert not torch.allclose(y2[:, t + 1 :], y[:, t + 1 :])


# -- 3. gradients ----------------------------------------------------------------------------


@pytest.mark.parametrize("name,opts", CASES, ids=CASE_IDS)
def test_every_parameter_gets_a_gradient(name, opts):
    module = make(name, dtype=torch.float32, **opts)
    x, rope = inputs(torch.float32, rope=True)
    y = module(x, rope)
    (y * torch.randn_like(y)).sum().backward()
    for pname, p in module.named_parameters():
        assert p.grad is not None, f"{name}: {pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name}: {pname} has a non-finite gradient"
        assert p.grad.abs().max() > 0, f"{name}: {pname} has an all-zero gradient"


# -- 4. stability ----------------------------------------------------------------------------


@pytest.mark.parametrize("precision", ["float32", "bf16-autocast"])
@pytest.mark.parametrize("backend", ["eager", "auto"])
@pytest.mark.parametrize("name", NAMES)
def test_large_logits_stay_finite(name, backend, precision):
    module = make(name, dtype=torch.float32, backend=backend)
    with torch.no_grad():
        module.c_attn.weight[: 2 * C] *= 100  # q and k rows: logits ~1e4
    x, rope = inputs(torch.float32, rope=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision != "float32"):
        y = module(x, rope)
        loss = (y.float() * torch.randn(y.shape)).sum()
    assert torch.isfinite(y).all(), f"{name}: non-finite output with large logits ({precision}, {backend})"
    loss.backward()
    bad = [n for n, p in module.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not bad, f"{name}: non-finite or missing gradients for {bad} with large logits ({precision}, {backend})"


# -- 5. at init, inside a GPT ----------------------------------------------------------------

# (probe key, expected mean at init) for the variants whose scale or gate has a designed init value.
INIT_MEANS = {"explicit_scale": ("scale", 1.0), "gated": ("gate", 0.25), "gated_g1": ("gate", 0.5)}


@pytest.mark.parametrize("name", NAMES)
def test_init_inside_gpt(name):
    from models.gpt import GPT

    torch.manual_seed(0)
    model = GPT(vocab_size=64, block_size=32, n_layer=2, n_head=4, n_embd=64, attention={"name": name})
    for block in model.transformer.h:
        block.attn.probe = True
    idx = torch.randint(0, 64, (4, 32))
    with torch.no_grad():
        logits_ = model(idx)
    assert torch.isfinite(logits_).all()
    attn = model.transformer.h[0].attn
    for key, value in attn.probe_out.items():
        assert torch.isfinite(value).all(), f"{name}: probe {key} is not finite at init"
    if name in INIT_MEANS:
        key, want = INIT_MEANS[name]
        got = attn.probe_out[key].mean().item()
        assert abs(got - want) < 0.05, f"{name}: mean {key} at init is {got:.4f}, expected {want} +- 0.05"
    if name == "v_bias":
        assert torch.all(attn.v_bias == 0), "v_bias must be zeros at init"
    if name in ("ca_bias", "attn_bias"):
        for pname in ("k_bias", "v_bias"):
            std = getattr(attn, pname).std().item()
            assert 0.01 < std < 0.03, f"{name}.{pname} should be N(0, 0.02) at init, std is {std:.4f}"
    if name == "sink":
        assert attn.sinks.shape == (4,) and attn.sinks.abs().max() < 0.1, "sinks should be N(0, 0.02) at init"


@pytest.mark.parametrize("init_gate,gate_input", [(0.25, "full"), (0.1, "head")])
def test_gated_init_gate_option(init_gate, gate_input):
    from models.gpt import GPT

    torch.manual_seed(0)
    attention = {"name": "gated", "init_gate": init_gate, "gate_input": gate_input}
    model = GPT(vocab_size=64, block_size=32, n_layer=2, n_head=4, n_embd=64, attention=attention)
    attn = model.transformer.h[0].attn
    attn.probe = True
    with torch.no_grad():
        model(torch.randint(0, 64, (4, 32)))
    assert abs(attn.probe_out["gate"].mean().item() - init_gate) < 0.05


# -- 6. null mass ----------------------------------------------------------------------------


def push_mass_to_null(module):
    """q = u, k = -u per head (logits -10 everywhere), slot key +u (slot logit +10), sinks 10."""
    a = math.sqrt(10 / math.sqrt(D))  # D a^2 / sqrt(D) = 10
    with torch.no_grad():
        module.c_attn.weight[: 2 * C].zero_()
        module.c_attn.bias[:C].fill_(a)
        module.c_attn.bias[C : 2 * C].fill_(-a)
        if hasattr(module, "k_bias"):
            module.k_bias.fill_(a)
        if hasattr(module, "sinks"):
            module.sinks.fill_(10.0)


@pytest.mark.parametrize("name", NAMES)
def test_null_mass(name):
    module = make(name)
    push_mass_to_null(module)
    module.probe = True
    x, _ = inputs()
    with torch.no_grad():
        module(x)
    probs = module.probe_out["probs"]
    row_sum = probs.sum(-1)
    if name in NULL_MASS_VARIANTS:
        null = module.probe_out["null_mass"]
        assert null.shape == (B, H, T)
        assert null.max() > 0.5, f"{name}: null mass never exceeds 0.5 (max {null.max().item():.3f})"
        torch.testing.assert_close(null, 1 - row_sum, rtol=0, atol=1e-10)
    elif name in ROWS_SUM_TO_ONE:
        torch.testing.assert_close(row_sum, torch.ones_like(row_sum), rtol=0, atol=1e-10)
        if "null_mass" in module.probe_out:
            torch.testing.assert_close(module.probe_out["null_mass"], torch.zeros_like(row_sum), rtol=0, atol=1e-10)
    elif name == "differential":
        lam, _ = differential_lambda(module)
        assert probs.shape == (B, H // 2, T, T)
        torch.testing.assert_close(row_sum, (1 - lam).expand_as(row_sum), rtol=0, atol=1e-10)
    else:
        pytest.fail(f"{name!r}: add it to NULL_MASS_VARIANTS or ROWS_SUM_TO_ONE in this file")


# -- 7. fast path == eager --------------------------------------------------------------------


@pytest.mark.parametrize("name,opts", CASES, ids=CASE_IDS)
def test_fast_path_matches_eager_float32(name, opts):
    eager = make(name, dtype=torch.float32, backend="eager", **opts)
    fast = build_attention(name, n_embd=C, n_head=H, block_size=BLOCK, backend="auto", **opts)
    fast.load_state_dict(eager.state_dict())
    x, rope = inputs(torch.float32, rope=True)
    w = torch.randn(B, T, C)
    outs = []
    for module in (eager, fast):
        y = module(x, rope)
        (y * w).sum().backward()
        outs.append(y)
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-5)
    for (pname, pe), pf in zip(eager.named_parameters(), fast.parameters()):
        torch.testing.assert_close(pf.grad, pe.grad, rtol=1e-4, atol=1e-4, msg=lambda m: f"grad of {pname}: {m}")


def ref_slot_kernel(q, k, v, slot_key, slot_bias, slot_value):
    """Softmax over [causal keys, slot] with slot logit q.k'/sqrt d + b; o = p V + pi v'."""
    s = logits(q, k)
    slot = q.new_zeros(*q.shape[:-1], 1)
    if slot_key is not None:
        slot = slot + q @ slot_key.transpose(-1, -2) / math.sqrt(q.size(-1))
    if slot_bias is not None:
        slot = slot + slot_bias
    z = torch.cat([s.masked_fill(visible(s.size(-1)) == 0, float("-inf")), slot], dim=-1)
    w = torch.softmax(z, dim=-1)
    p, pi = w[..., :-1], w[..., -1:]
    o = p @ v + (pi * slot_value if slot_value is not None else 0)
    return o, pi.squeeze(-1)


@pytest.mark.parametrize("kernel", ["flex", "sdpa"])
@pytest.mark.parametrize("with_value", [False, True], ids=["novalue", "value"])
@pytest.mark.parametrize("with_bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("with_key", [False, True], ids=["nokey", "key"])
def test_slot_kernels_match_reference(with_key, with_bias, with_value, kernel):
    from kernels import slot

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, T, D, generator=g) for _ in range(3))
    slot_key = torch.randn(1, H, 1, D, generator=g) if with_key else None
    slot_bias = torch.randn(1, H, 1, 1, generator=g) if with_bias else None
    slot_value = torch.randn(1, H, 1, D, generator=g) if with_value else None
    with torch.no_grad():
        if kernel == "flex":
            o, pi = slot.flex_slot_attention(q, k, v, slot_key, slot_bias, slot_value, compiled=False)
        else:
            o, pi = slot.sdpa_slot_attention(q, k, v, slot_key, slot_bias, slot_value)
        o_ref, pi_ref = ref_slot_kernel(q, k, v, slot_key, slot_bias, slot_value)
    torch.testing.assert_close(o, o_ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(pi, pi_ref, rtol=0, atol=1e-5)


# -- 8. config errors ------------------------------------------------------------------------


@pytest.mark.parametrize("bad,valid_range", [({"gamma": 0.1}, r"gamma\s*(<=|≤)\s*0"), ({"zeta": 0.9}, r"zeta\s*(>=|≥)\s*1")])
def test_clipped_softmax_rejects_out_of_range(bad, valid_range):
    with pytest.raises(ConfigError) as err:
        build_attention("clipped_softmax", n_embd=C, n_head=H, block_size=BLOCK, **bad)
    assert re.search(valid_range, str(err.value)), f"message should state the valid range: {err.value}"


def test_differential_needs_even_heads():
    with pytest.raises(ConfigError, match="(?i)even"):
        build_attention("differential", n_embd=24, n_head=3, block_size=BLOCK)


# -- whole models ----------------------------------------------------------------------------


@pytest.mark.parametrize("style", ["gpt2", "llama"])
@pytest.mark.parametrize("name", NAMES)
def test_small_gpt_forward_backward(name, style):
    from models.gpt import GPT

    torch.manual_seed(0)
    model = GPT(vocab_size=64, block_size=16, n_layer=2, n_head=4, n_embd=32, attention={"name": name}, style=style)
    idx = torch.randint(0, 64, (2, 16))
    loss = model.loss(idx[:, :-1], idx[:, 1:])
    assert torch.isfinite(loss)
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), f"{name}/{style}: bad gradient for {pname}"
