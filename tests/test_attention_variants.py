"""Every registered attention variant against the plain-torch reference of its formula that
it declares (``reference``), plus causality, gradients, stability, init values, null mass,
fast paths and config errors.

Everything variant-specific comes from the variant's own declaration (outlier_lab/models/attention/base.py):
its reference, the option sets to test, what its probe rows sum to, its init values. Every
test is parametrized over ``registered_names()``, so a new variant is tested by itself, and
fails with a clear message until it declares a reference.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

from outlier_lab.models.attention import build_attention, get_attention_class, registered_names
from outlier_lab.models.attention import reference as ref
from outlier_lab.models.attention.base import rope_tables

ROOT = Path(__file__).resolve().parents[1]
from outlier_lab.errors import ConfigError

B, T, C, H = 2, 8, 32, 4
D = C // H  # head size
BLOCK = 32  # block_size != T, so that "sequence" and "block_size" lengths differ

NAMES = registered_names()
CASES = [(name, opts) for name in NAMES for opts in get_attention_class(name).test_options]


def case_id(case):
    name, opts = case
    return "-".join([name, *(f"{k}={v}" for k, v in opts.items())])


CASE_IDS = [case_id(c) for c in CASES]


def reference(module, x, rope, opts):
    """The variant's declared reference; a variant without one fails here, saying so."""
    try:
        return module.reference(x, rope, **{**module.options(), **opts})
    except NotImplementedError as err:
        pytest.fail(str(err))


def test_a_variant_without_a_reference_fails_with_a_clear_message():
    from outlier_lab.models.attention.base import CausalSelfAttention

    class Undeclared(CausalSelfAttention):
        variant_name = "undeclared"

        def attend(self, q, k, v, x, probe):
            return self.softmax_attend(q, k, v, probe)

    module = Undeclared(C, H, block_size=BLOCK)
    x, rope = inputs()
    with pytest.raises(pytest.fail.Exception, match="'undeclared' declares no reference.*Undeclared.reference"):
        reference(module, x, rope, {})


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
    module = make(name, backend=backend, **opts)
    x, rope = inputs(rope=use_rope)
    with torch.no_grad():
        torch.testing.assert_close(module(x, rope), reference(module, x, rope, opts)["out"], rtol=0, atol=1e-10)


@pytest.mark.parametrize("backend", ["eager", "auto"])
@pytest.mark.parametrize("name,opts", CASES, ids=CASE_IDS)
def test_gradients_match_reference_float64(name, opts, backend):
    """Backward too: gradients of the input and every parameter equal autograd through the reference
    (this is what checks hand-written backward passes)."""
    module = make(name, backend=backend, **opts)
    x, rope = inputs(rope=True)
    x.requires_grad_(True)
    weight = torch.randn(B, T, C, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    params = [x, *module.parameters()]
    got = torch.autograd.grad((module(x, rope) * weight).sum(), params)
    want = torch.autograd.grad((reference(module, x, rope, opts)["out"] * weight).sum(), params)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-9)


@pytest.mark.parametrize("name,opts", CASES, ids=CASE_IDS)
def test_probe_matches_reference_and_normal_mode(name, opts):
    """Probe mode: same output, and probs / null_mass / scale / gate equal the reference's."""
    module = make(name, **opts)
    x, rope = inputs(rope=True)
    with torch.no_grad():
        y = module(x, rope)
        module.probe = True
        y_probe = module(x, rope)
        expected = reference(module, x, rope, opts)
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

@pytest.mark.parametrize("name", NAMES)
def test_init_inside_gpt(name):
    """Inside a GPT, after its init: finite probes, and the declared init values
    (``init_means`` of probe extras, ``init_std`` of parameters; std 0 means zeros)."""
    from outlier_lab.models.gpt import GPT

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
    for key, want in attn.init_means.items():
        got = attn.probe_out[key].mean().item()
        assert abs(got - want) < 0.05, f"{name}: mean {key} at init is {got:.4f}, expected {want} +- 0.05"
    for pname, std in attn.init_std.items():
        p = getattr(attn, pname)
        if std == 0:
            assert torch.all(p == 0), f"{name}.{pname} must be zeros at init"
        elif p.numel() >= 64:
            assert 0.5 * std < p.std().item() < 1.5 * std, f"{name}.{pname}: std {p.std().item():.4f}, expected {std}"
        else:  # too few values for a std: all within 5 std of 0, not all zero
            assert 0 < p.abs().max() < 5 * std, f"{name}.{pname} should be N(0, {std}) at init"


@pytest.mark.parametrize("init_gate,gate_input", [(0.25, "full"), (0.1, "head")])
def test_gated_init_gate_option(init_gate, gate_input):
    from outlier_lab.models.gpt import GPT

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
    """With the mass pushed towards "nothing", each row of the probe's weights sums to what
    the variant declares (``probe_rows``)."""
    module = make(name)
    push_mass_to_null(module)
    module.probe = True
    x, _ = inputs()
    with torch.no_grad():
        module(x)
    probs = module.probe_out["probs"]
    row_sum = probs.sum(-1)
    rows = module.probe_rows
    if rows == "null_mass":
        null = module.probe_out["null_mass"]
        assert null.shape == (B, H, T)
        assert null.max() > 0.5, f"{name}: null mass never exceeds 0.5 (max {null.max().item():.3f})"
        torch.testing.assert_close(null, 1 - row_sum, rtol=0, atol=1e-10)
    elif rows == "one":
        torch.testing.assert_close(row_sum, torch.ones_like(row_sum), rtol=0, atol=1e-10)
        if "null_mass" in module.probe_out:
            torch.testing.assert_close(module.probe_out["null_mass"], torch.zeros_like(row_sum), rtol=0, atol=1e-10)
    elif rows == "one_minus_lambda":
        lam = module.probe_out["lambda"]
        torch.testing.assert_close(row_sum, (1 - lam).expand_as(row_sum), rtol=0, atol=1e-10)
        assert lam.abs().max() > 0.05, "lambda ~ 0 would not distinguish 1 - lambda from 1"
    else:
        pytest.fail(f"{name}: probe_rows={rows!r}; declare one of 'one', 'null_mass', 'one_minus_lambda'")


@pytest.mark.parametrize("name", NAMES)
def test_declared_family_is_the_kernels_entry_point_it_calls(name, monkeypatch):
    """``family`` (read by the benchmarks and the backend docs) is what the variant really runs on."""
    from outlier_lab import kernels

    calls = []
    for fam in ("softmax", "slot", "elementwise"):
        entry = getattr(kernels, f"{fam}_attention")
        monkeypatch.setattr(kernels, f"{fam}_attention",
                            lambda *a, _fam=fam, _entry=entry, **kw: calls.append(_fam) or _entry(*a, **kw))
    module = make(name)
    with torch.no_grad():
        module(inputs()[0])
    assert set(calls) - {"softmax"} <= {module.family}, f"{name} declares {module.family!r} but calls {calls}"
    assert module.family in calls, f"{name} declares {module.family!r} but calls {calls}"


@pytest.mark.parametrize("name", NAMES)
def test_one_file_and_one_config_per_variant(name):
    """A variant lives in outlier_lab/models/attention/<name>.py and is configured by configs/attention/<name>.yaml."""
    from omegaconf import OmegaConf

    cls = get_attention_class(name)
    assert cls.__module__ == f"outlier_lab.models.attention.{name}", f"{name} is defined in {cls.__module__}"
    config = OmegaConf.load(ROOT / "configs" / "attention" / f"{name}.yaml")
    assert config.name == name


def test_ca_bias_adds_its_slot_while_attn_bias_takes_it_from_the_keys():
    """The seed paper's (c) versus (d), with the slot key enlarged so that pi is large: ca_bias's
    probe weights are plain softmax(s) (rows sum to 1) and pi is reported apart; attn_bias's
    rows sum to 1 - pi."""
    x, _ = inputs()
    rows = {}
    for name in ("ca_bias", "attn_bias"):
        module = make(name)
        push_mass_to_null(module)
        module.probe = True
        with torch.no_grad():
            module(x)
        rows[name] = module.probe_out
    q, k, _ = ref.qkv(module, x, None)  # same seed: both modules have the same q, k
    softmax = ref.causal_softmax(ref.logits(q, k))
    pi = rows["attn_bias"]["slot_weight"]
    assert pi.min() > 0.5
    torch.testing.assert_close(rows["ca_bias"]["probs"], softmax, rtol=0, atol=1e-10)
    torch.testing.assert_close(rows["ca_bias"]["slot_weight"], pi, rtol=0, atol=1e-10)
    torch.testing.assert_close(rows["attn_bias"]["probs"].sum(-1), 1 - pi, rtol=0, atol=1e-10)


def test_relu_divides_each_row_by_the_keys_its_query_sees(monkeypatch):
    """Guo et al.'s p_ij = relu(s_ij) / (i + 1), by hand on T = 3, d = 1 (s_ij = q_i k_j):
    q = (2, 1, 3), k = (1, -1, 2), v = (1, 2, 4) give the causal rows s = [2], [1, -1],
    [3, -3, 6], so P = [2], [1/2, 0], [1, 0, 2], o = (2, 1/2, 9) and null mass (-1, 1/2, -2).
    Dividing by T instead gives o = (2/3, 1/3, 9), by the row sum (a normalised relu)
    o = (1, 1, 3), not at all o = (2, 1, 27). The chunked eager path (one query per chunk)
    must give the same output."""
    from outlier_lab.kernels import chunked

    q, k, v = (torch.tensor(t, dtype=torch.float64) for t in ([2.0, 1, 3], [1.0, -1, 2], [1.0, 2, 4]))
    probs = torch.tensor([[2, 0, 0], [1 / 2, 0, 0], [1, 0, 2]], dtype=torch.float64)
    out = torch.tensor([2, 1 / 2, 9], dtype=torch.float64)
    wrong = {"divided by T": torch.tensor([2 / 3, 1 / 3, 9]), "row-normalised": torch.tensor([1.0, 1, 3]),
             "undivided": torch.tensor([2.0, 1, 27])}
    torch.testing.assert_close(probs @ v, out)
    for label, o in wrong.items():
        assert (o.double() - out).abs().max() > 0.4, f"the hand case does not tell {label} apart"

    # three heads of width 1: head 0 reads (q, k, v) from x's channels 0, 1, 2; heads 1, 2 get zeros
    module = build_attention("relu", n_embd=3, n_head=3, block_size=3, backend="eager").double()
    with torch.no_grad():
        module.c_attn.weight.zero_()
        module.c_attn.bias.zero_()
        module.c_attn.weight[[0, 3, 6], [0, 1, 2]] = 1.0
        module.c_proj.weight.copy_(torch.eye(3))
        module.c_proj.bias.zero_()
        x = torch.stack([q, k, v], dim=-1).unsqueeze(0)  # (1, T, 3)
        module.probe = True
        y = module(x)
        torch.testing.assert_close(module.probe_out["probs"][0, 0], probs, rtol=0, atol=1e-12)
        torch.testing.assert_close(module.probe_out["null_mass"][0, 0], torch.tensor([-1, 1 / 2, -2]).double(),
                                   rtol=0, atol=1e-12)
        torch.testing.assert_close(y[0, :, 0], out, rtol=0, atol=1e-12)
        assert y[0, :, 1:].abs().max() == 0
        module.probe = False
        monkeypatch.setattr(chunked, "MIN_CHUNK", 1)  # T = 3 in three chunks of one query each
        assert chunked.num_chunks(3) == 3
        torch.testing.assert_close(module(x)[0, :, 0], out, rtol=0, atol=1e-12)


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
    s = ref.logits(q, k)
    slot = q.new_zeros(*q.shape[:-1], 1)
    if slot_key is not None:
        slot = slot + q @ slot_key.transpose(-1, -2) / math.sqrt(q.size(-1))
    if slot_bias is not None:
        slot = slot + slot_bias
    z = torch.cat([s.masked_fill(ref.visible(s.size(-1)) == 0, float("-inf")), slot], dim=-1)
    w = torch.softmax(z, dim=-1)
    p, pi = w[..., :-1], w[..., -1:]
    o = p @ v + (pi * slot_value if slot_value is not None else 0)
    return o, pi.squeeze(-1)


@pytest.mark.parametrize("kernel", ["flex", "sdpa"])
@pytest.mark.parametrize("with_value", [False, True], ids=["novalue", "value"])
@pytest.mark.parametrize("with_bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("with_key", [False, True], ids=["nokey", "key"])
def test_slot_kernels_match_reference(with_key, with_bias, with_value, kernel):
    from outlier_lab.kernels import slot

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
    from outlier_lab.models.gpt import GPT

    torch.manual_seed(0)
    model = GPT(vocab_size=64, block_size=16, n_layer=2, n_head=4, n_embd=32, attention={"name": name}, style=style)
    idx = torch.randint(0, 64, (2, 16))
    loss = model.loss(idx[:, :-1], idx[:, 1:])
    assert torch.isfinite(loss)
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), f"{name}/{style}: bad gradient for {pname}"
