"""model.qk_norm, model.norm_scale=single (outlier_lab/models/norms.py) and the outlier penalties of the
regularizer group (outlier_lab/models/regularizers.py): each against a formula written out here, the
options through the real configs, checkpoints, and smoothing on a single-scale model."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from scipy import stats
from torch import nn

import train
from outlier_lab.errors import ConfigError
from outlier_lab.models.attention import build_attention, get_attention_class, registered_names
from outlier_lab.models.attention.base import rope_tables
from outlier_lab.models.checkpoint import load_model
from outlier_lab.models.gpt import GPT
from outlier_lab.models.lit_gpt import LitGPT
from outlier_lab.models.norms import NORMS, SingleScaleNorm
from outlier_lab.models.regularizers import ActivationKurtosis, Penalties, WeightKurtosis
from outlier_lab import compression as cp
from tests.helpers import TINY, compose_train, read_metric

ROOT = Path(__file__).resolve().parents[1]
B, T, C, H = 2, 8, 32, 4
D = C // H
EPS = 1e-5


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def attention(name, qk_norm=True, seed=0, **opts):
    torch.manual_seed(seed)
    module = build_attention(name, n_embd=C, n_head=H, block_size=32, qk_norm=qk_norm, **opts)
    with torch.no_grad():  # random, not init values: the q/k gains too, so that each one matters
        for p in module.parameters():
            p.normal_(0, 0.3)
    return module.double()


def inputs(seed=1):
    x = torch.randn(B, T, C, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return x, tuple(t.double() for t in rope_tables(T, D))


def tiny_gpt(seed=0, **kwargs):
    torch.manual_seed(seed)
    return GPT(vocab_size=64, block_size=16, n_layer=2, n_head=H, n_embd=C, **kwargs)


# -- 1. qk_norm ---------------------------------------------------------------------------------


def written_out_qk_norm(module, x, rope, probs):
    """RMSNorm of each head's q and k over its d channels with the gains q_g, k_g (shared by the
    heads), then rotary positions, then causal attention with weights probs(s) and c_proj."""
    W, b = module.c_attn.weight, module.c_attn.bias
    qkv = x @ W.T + b
    q, k, v = (qkv[..., i * C:(i + 1) * C].reshape(B, T, H, D).permute(0, 2, 1, 3) for i in range(3))
    q = q / torch.sqrt((q ** 2).mean(-1, keepdim=True) + EPS) * module.q_norm.weight
    k = k / torch.sqrt((k ** 2).mean(-1, keepdim=True) + EPS) * module.k_norm.weight
    cos, sin = rope
    rot = lambda t: t * cos + torch.cat([-t[..., D // 2:], t[..., :D // 2]], -1) * sin  # noqa: E731
    s = rot(q) @ rot(k).transpose(-1, -2) / math.sqrt(D)
    p = probs(s) * torch.ones(T, T, dtype=s.dtype).tril()
    y = (p @ v).permute(0, 2, 1, 3).reshape(B, T, C)
    return y @ module.c_proj.weight.T + module.c_proj.bias


@pytest.mark.parametrize("backend", ["eager", "auto"])
@pytest.mark.parametrize("name, probs", [
    ("softmax", lambda s: torch.softmax(s.masked_fill(torch.ones_like(s).tril() == 0, -math.inf), -1)),
    ("sigmoid", lambda s: torch.sigmoid(s - math.log(T))),  # b = -ln n, n the sequence length
])
def test_qk_norm_matches_its_written_out_formula(name, probs, backend):
    module = attention(name, backend=backend)
    x, rope = inputs()
    with torch.no_grad():
        torch.testing.assert_close(module(x, rope), written_out_qk_norm(module, x, rope, probs), rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", registered_names())
def test_every_variant_with_qk_norm_matches_its_reference(name):
    """The references honour qk_norm (outlier_lab/models/attention/reference.py qkv), so each variant's
    fast path with qk_norm is checked against its formula, here on its last option set."""
    opts = get_attention_class(name).test_options[-1]
    module = attention(name, **opts)
    x, rope = inputs()
    with torch.no_grad():
        want = module.reference(x, rope, **{**module.options(), **opts})["out"]
        torch.testing.assert_close(module(x, rope), want, rtol=0, atol=1e-10)
        plain = attention(name, qk_norm=False, **opts)
        plain.load_state_dict({k: v for k, v in module.state_dict().items() if "_norm." not in k})
        assert (plain(x, rope) - want).abs().max() > 1e-3  # the norm changes the output


@pytest.mark.parametrize("style", ["gpt2", "llama"])
def test_qk_norm_gains_are_per_head_dim_shared_and_used(style):
    model = tiny_gpt(style=style, qk_norm=True).eval()
    attn = model.transformer.h[0].attn
    assert attn.q_norm.weight.shape == attn.k_norm.weight.shape == (D,)  # one d-vector for all heads
    assert not any("_norm." in key for key in tiny_gpt(style=style).state_dict())  # off: no q/k norm at all
    idx = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(idx)
        for gain in (attn.q_norm.weight, attn.k_norm.weight):
            gain[0] = 5.0
            after = model(idx)
            assert (after - before).abs().max() > 1e-4
            before = after


# -- 2. single-scale norms ----------------------------------------------------------------------


def test_single_scale_norm_matches_its_formula():
    x = torch.randn(3, 5, C, dtype=torch.float64)
    rms = SingleScaleNorm(C, centered=False).double()
    ln = SingleScaleNorm(C, centered=True, bias=True).double()
    with torch.no_grad():
        rms.weight.fill_(1.7)
        ln.weight.fill_(0.6)
        ln.bias.copy_(torch.linspace(-1, 1, C))
    assert sum(p.numel() for p in rms.parameters()) == 1 and ln.weight.numel() == 1
    torch.testing.assert_close(rms(x), x / torch.sqrt((x ** 2).mean(-1, keepdim=True) + EPS) * 1.7)
    centred = x - x.mean(-1, keepdim=True)
    want = centred / torch.sqrt((centred ** 2).mean(-1, keepdim=True) + EPS) * 0.6 + torch.linspace(-1, 1, C)
    torch.testing.assert_close(ln(x), want)
    for norm in (rms, ln):  # the per-channel equal that smoothing folds into
        torch.testing.assert_close(norm.per_channel()(x), norm(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("style, bias", [("gpt2", True), ("gpt2", False), ("llama", False)])
def test_a_single_scale_model_has_no_per_channel_norm_gain(style, bias):
    model = tiny_gpt(style=style, bias=bias, norm_scale="single")
    norms = {name: m for name, m in model.named_modules() if isinstance(m, NORMS)}
    assert set(norms) == {"transformer.h.0.ln_1", "transformer.h.0.ln_2", "transformer.h.1.ln_1",
                          "transformer.h.1.ln_2", "transformer.ln_f"}
    for m in norms.values():
        assert isinstance(m, SingleScaleNorm) and m.weight.shape == (1,) and m.centered is (style == "gpt2")
        assert (m.bias is not None) is bias  # a per-channel shift only with model.bias
    channel = tiny_gpt(style=style, bias=bias)
    n_params = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in channel.parameters()) - n_params == 5 * (C - 1)  # a scalar for each C-gain


@pytest.mark.parametrize("kwargs, message", [
    (dict(norm_scale="foo"), "unknown model.norm_scale 'foo'; choose one of channel, single"),
    (dict(qk_norm="maybe"), "model.qk_norm='maybe'; choose one of true, false"),
])
def test_bad_norm_options_are_one_line_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        tiny_gpt(**kwargs)


@pytest.mark.slow
@pytest.mark.parametrize("arg, message", [
    ("model.norm_scale=foo", "unknown model.norm_scale 'foo'; choose one of channel, single"),
    ("model.qk_norm=maybe", "model.qk_norm='maybe'; choose one of true, false"),
])
def test_bad_norm_options_on_the_command_line(tmp_path, arg, message):
    result = subprocess.run([sys.executable, "train.py", arg, f"hydra.run.dir={tmp_path}", "logger=none",
                             "trainer.max_steps=1"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    out = result.stdout + result.stderr
    assert result.returncode == 2 and message in " ".join(out.split()) and "Traceback" not in out, out


# -- 3. penalties ---------------------------------------------------------------------------------


def test_weight_kurtosis_is_kure_on_the_blocks_linear_weights():
    model = tiny_gpt()
    g = torch.Generator().manual_seed(0)
    linears = [m for m in model.transformer.h.modules() if isinstance(m, nn.Linear)]
    with torch.no_grad():  # distinct shapes of distribution, and a head with one huge outlier
        for i, m in enumerate(linears):
            w = torch.rand(m.weight.shape, generator=g) - 0.5 if i % 2 else torch.randn(m.weight.shape, generator=g)
            m.weight.copy_(w ** (1 + i % 3) if i % 3 == 1 else w)
        model.lm_head.weight[0, 0] = 100.0
    kurt = [stats.kurtosis(m.weight.detach().numpy().ravel(), fisher=False) for m in linears]
    want = np.mean([(k - 1.8) ** 2 for k in kurt])
    value = WeightKurtosis(weight=1.0).value(model).item()
    assert len(linears) == 8 and value == pytest.approx(want, rel=1e-5)
    excess = np.mean([(k - 3 - 1.8) ** 2 for k in kurt])  # scipy's default, fisher=True
    head = stats.kurtosis(model.lm_head.weight.detach().numpy().ravel(), fisher=False)
    with_head = np.mean([(k - 1.8) ** 2 for k in kurt + [head]])
    assert abs(value - excess) > 0.1 and abs(value - with_head) > 0.1


def disjoint_scales_batch(model):
    """Sequence 0 from tokens 0..31, sequence 1 from 32..63 whose embeddings are 10x larger:
    pooling the batch mixes two scales, so its kurtosis differs from the per-sequence mean."""
    with torch.no_grad():
        model.transformer.wte.weight[32:] *= 10
    g = torch.Generator().manual_seed(3)
    return torch.stack([torch.randint(0, 32, (16,), generator=g), torch.randint(32, 64, (16,), generator=g)])


def block_outputs(model, idx):
    """Each block's output, by running the blocks by hand (gpt2 style)."""
    x = model.transformer.wte(idx) + model.transformer.wpe(torch.arange(idx.size(1)))
    outs = []
    for block in model.transformer.h:
        x = block(x)
        outs.append(x.detach().numpy())
    return outs


def test_activation_kurtosis_is_per_sequence_over_its_values_then_averaged():
    model = tiny_gpt()
    idx = disjoint_scales_batch(model)
    penalty = ActivationKurtosis(weight=1.0)
    with penalty.capture(model):
        model(idx)
    assert not any(m._forward_hooks for m in model.modules())  # removed after the forward
    value = penalty.value(model).item()
    outs = block_outputs(model, idx)
    want = np.mean([np.mean([stats.kurtosis(h[b].ravel(), fisher=False) for b in range(2)]) for h in outs])
    pooled = np.mean([stats.kurtosis(h.ravel(), fisher=False) for h in outs])
    assert value == pytest.approx(want, rel=1e-4)
    assert abs(value - pooled) > 0.5 and abs(value - (want - 3)) > 1
    with pytest.raises(RuntimeError, match="inside capture"):  # the activations are not kept
        penalty.value(model)


@pytest.mark.parametrize("config", [dict(weight_kurtosis=WeightKurtosis), dict(act_kurtosis=ActivationKurtosis)],
                         ids=["weight_kurtosis", "act_kurtosis"])
def test_penalty_gradients_flow_and_a_zero_weight_changes_nothing(config):
    (name, cls), = config.items()
    idx = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(1))

    def grads(weight):
        model = tiny_gpt()
        penalties = Penalties({name: cls(weight=weight)} if weight is not None else {})
        with penalties.capture(model):
            loss = model.loss(idx[:, :-1], idx[:, 1:])
        for value, weighted in penalties.terms(model).values():
            assert value.dim() == 0 and torch.isfinite(value)
            loss = loss if weighted is None else loss + weighted
        loss.backward()
        return loss.detach(), model.transformer.h[0].attn.c_attn.weight.grad.clone()

    loss, grad = grads(None)
    zero_loss, zero_grad = grads(0.0)
    assert torch.equal(zero_loss, loss) and torch.equal(zero_grad, grad)
    loss1, grad1 = grads(0.1)
    assert loss1 > loss and (grad1 - grad).abs().max() > 1e-6


def test_penalty_config_errors():
    with pytest.raises(ConfigError, match="WeightKurtosis.weight=-1"):
        WeightKurtosis(weight=-1)
    with pytest.raises(ConfigError, match="regularizer.foo is a int"):
        Penalties({"foo": 3})


# -- 4. training runs through the real configs ---------------------------------------------------


def tiny_run(tmp_path, corpus_glob, cache_dir, name, *overrides):
    cfg = compose_train(tmp_path / name, *TINY, "data=text_files", f"data.corpus.paths=[{corpus_glob}]",
                        "eval.compression=[]", "callbacks.outlier_monitor.every_n_steps=100", *overrides,
                        cache_dir=cache_dir)
    train.train(cfg)
    return tmp_path / name


PENALTIES = {"kure": ["weight_kurtosis"], "act_kurtosis": ["act_kurtosis"],
             "kurtosis": ["weight_kurtosis", "act_kurtosis"]}


@pytest.mark.parametrize("option", list(PENALTIES))
def test_each_regularizer_trains_and_logs_its_penalties(tmp_path, corpus_glob, cache_dir, option):
    norm_options = ("model.qk_norm=true", "model.norm_scale=single") if option == "kurtosis" else ()
    run = tiny_run(tmp_path, corpus_glob, cache_dir, "run", f"regularizer={option}", "trainer.max_steps=4",
                   "trainer.val_check_interval=4", *norm_options)
    loss, total = read_metric(run, "train/loss"), read_metric(run, "train/loss_total")
    weights = compose_train(tmp_path, f"regularizer={option}").regularizer
    added = {step: 0.0 for step in loss}
    for name in PENALTIES[option]:
        raw, weighted = read_metric(run, f"train/penalty/{name}"), read_metric(run, f"train/penalty/{name}/weighted")
        assert sorted(raw) == sorted(loss) == [0, 1, 2, 3]
        for step in raw:
            assert weighted[step] == pytest.approx(weights[name].weight * raw[step], rel=1e-5)
            added[step] += weighted[step]
    for step in loss:
        assert total[step] == pytest.approx(loss[step] + added[step], rel=1e-5)
    model, _ = load_model(run / "checkpoints" / "last.ckpt")  # the options come back with the model
    assert model.config["qk_norm"] is (model.transformer.h[0].attn.q_norm is not None) is bool(norm_options)
    assert isinstance(model.transformer.ln_f, SingleScaleNorm) is bool(norm_options)
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert set(ckpt["hyper_parameters"]["regularizer"]) == set(PENALTIES[option])


def test_regularizer_none_leaves_the_losses_as_they_were(tmp_path, corpus_glob, cache_dir):
    """none adds nothing; penalties with weight 0 (computed, hooked, logged) change no number."""
    common = ("trainer.max_steps=6", "trainer.val_check_interval=6")
    none = tiny_run(tmp_path, corpus_glob, cache_dir, "none", *common)
    zero = tiny_run(tmp_path, corpus_glob, cache_dir, "zero", *common, "regularizer=kurtosis",
                    "regularizer.weight_kurtosis.weight=0", "regularizer.act_kurtosis.weight=0")
    assert read_metric(none, "train/loss") == read_metric(zero, "train/loss")
    assert read_metric(none, "val/loss") == read_metric(zero, "val/loss")
    assert read_metric(zero, "train/penalty/act_kurtosis")[5] > 1  # computed and logged ...
    assert read_metric(zero, "train/penalty/act_kurtosis/weighted")[5] == 0  # ... and not added
    header = (none / "metrics.csv").read_text().splitlines()[0]
    assert "penalty" not in header and "loss_total" not in header
    assert compose_train(tmp_path).regularizer == {}  # the default


def test_resume_with_penalties_continues_exactly(tmp_path, corpus_glob, cache_dir):
    common = ("trainer.max_steps=10", "trainer.val_check_interval=5", "regularizer=kurtosis", "optim.warmup_steps=2")
    straight = tiny_run(tmp_path, corpus_glob, cache_dir, "straight", *common)
    with pytest.raises(RuntimeError, match="simulated crash at step 7"):
        tiny_run(tmp_path, corpus_glob, cache_dir, "resumed", *common,
                 "+callbacks.crash._target_=tests.helpers.InterruptAt", "+callbacks.crash.step=7")
    resumed = tiny_run(tmp_path, corpus_glob, cache_dir, "resumed", *common, "ckpt_path=auto")
    for key in ("train/loss", "train/penalty/act_kurtosis", "train/penalty/weight_kurtosis"):
        ref, res = read_metric(straight, key), read_metric(resumed, key)
        for step in range(5, 10):
            assert res[step] == pytest.approx(ref[step], rel=1e-6, abs=1e-7), (key, step)


# -- 5. checkpoints -------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs", [dict(qk_norm=True), dict(norm_scale="single")])
def test_from_nanogpt_refuses_qk_norm_and_single_scale(tmp_path, kwargs):
    plain = tiny_gpt().state_dict()
    GPT.from_nanogpt(plain, n_head=H)  # a plain one loads
    with pytest.raises(ConfigError, match="nanoGPT checkpoint has per-channel norms and no q/k norm"):
        GPT.from_nanogpt(plain, n_head=H, **kwargs)  # asked for
    with pytest.raises(ConfigError, match="nanoGPT checkpoint has per-channel norms and no q/k norm"):
        GPT.from_nanogpt(tiny_gpt(**kwargs).state_dict(), n_head=H)  # found in the state dict
    torch.save({"model": plain, "model_args": {"n_head": H, **kwargs}}, tmp_path / "ckpt.pt")
    with pytest.raises(ConfigError, match="cannot be loaded from one"):
        load_model(tmp_path / "ckpt.pt")


def test_a_checkpoint_reloads_with_its_norm_options(tmp_path):
    module = LitGPT(model=dict(vocab_size=64, block_size=16, n_layer=2, n_head=H, n_embd=C, style="llama",
                               qk_norm=True, norm_scale="single"),
                    optim=OmegaConf.to_container(compose_train(tmp_path).optim, resolve=True),
                    regularizer={"act_kurtosis": ActivationKurtosis(0.5)})
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, tmp_path / "x.ckpt")
    model, _ = load_model(tmp_path / "x.ckpt")
    assert (model.config["qk_norm"], model.config["norm_scale"]) == (True, "single")
    idx = torch.randint(0, 64, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(model(idx), module.model(idx), rtol=0, atol=0)
    reloaded = LitGPT(**torch.load(tmp_path / "x.ckpt", weights_only=True)["hyper_parameters"])
    assert reloaded.penalties.items["act_kurtosis"].weight == 0.5


# -- 6. smoothing on a single-scale model -----------------------------------------------------------


@pytest.mark.parametrize("style, bias", [("gpt2", True), ("llama", False)])
def test_smoothing_a_single_scale_model_folds_into_its_per_channel_equal(style, bias):
    """No per-channel factor folds into one scalar gain: the working copy's ln_1 / ln_2 become
    the per-channel norms they equal, the factors fold into those, and the logits stay."""
    model = tiny_gpt(style=style, bias=bias, norm_scale="single", qk_norm=True).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ln_" in name or "bias" in name:
                p.add_(0.3 * torch.randn_like(p))
    gains = [b.ln_1.weight.item() for b in model.transformer.h]
    batches = [torch.randint(0, 64, (4, 16)) for _ in range(2)]
    smoothed = cp.smooth_shift_scale(model, batches, alpha=0.5)
    for block, gain in zip(model.transformer.h, gains):  # the original is untouched
        assert isinstance(block.ln_1, SingleScaleNorm) and block.ln_1.weight.item() == gain
    for block in smoothed.transformer.h:
        for norm in (block.ln_1, block.ln_2):
            assert type(norm) is (nn.LayerNorm if style == "gpt2" else nn.RMSNorm) and norm.weight.std() > 0
    assert isinstance(smoothed.transformer.ln_f, SingleScaleNorm)  # not smoothed
    x = torch.randint(0, 64, (4, 16))
    with torch.no_grad():
        ref = model(x)
        assert (smoothed(x) - ref).abs().max() <= 1e-4 * ref.abs().max()


def test_compression_protocols_run_on_a_trained_single_scale_model():
    model = tiny_gpt(norm_scale="single", qk_norm=True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    successors = torch.randint(0, 64, (64, 4), generator=g)

    def batch():
        seq = [torch.randint(0, 64, (8,), generator=g)]
        for _ in range(16):
            seq.append(successors[seq[-1], torch.randint(0, 4, (8,), generator=g)])
        seq = torch.stack(seq, 1)
        return seq[:, :-1], seq[:, 1:]

    for _ in range(60):
        opt.zero_grad()
        model.loss(*batch()).backward()
        opt.step()
    model.eval()
    val, calib = [batch() for _ in range(2)], [batch() for _ in range(2)]
    results = cp.evaluate_protocols(model, ["smooth_w8a8", "w8a8_linear", "w8a8"], val, calib)
    for name in ("smooth_w8a8", "w8a8_linear", "w8a8"):
        assert 0.8 < results[f"compress/{name}/ppl_ratio"] < 1.5, results
    points = {n for n, _ in cp.activation_points(model, keep_head_fp=True)}
    assert {"transformer.h.0.ln_1", "transformer.ln_f", "transformer.h.0.attn.q_norm"} <= points
