"""Probes, the outlier and convergence monitors, end to end through train.py."""

from __future__ import annotations

import csv
import json
import math
from types import SimpleNamespace

import pytest
import torch

import train
from outlier_lab.models.gpt import GPT
from outlier_lab.monitor import ConvergenceMonitor
from outlier_lab.metrics import Probe, run_measures
from outlier_lab.probe.ours import probe
from tests.helpers import TINY, compose_train, read_metric
from tests.probe_figures import capture_saved_figures, check_probe_figures


def small_gpt(attention="softmax", n_layer=3):
    torch.manual_seed(0)
    return GPT(vocab_size=64, block_size=32, n_layer=n_layer, n_head=4, n_embd=32, attention={"name": attention})


def hooks_left(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.mark.parametrize("attention", ["softmax", "explicit_scale", "softpick", "differential"])
def test_probe_captures_every_layer_and_removes_its_hooks(attention):
    model = small_gpt(attention)
    model.train()
    idx = torch.randint(0, 64, (2, 32))
    result = probe(model, idx)
    assert len(result.residual) == len(result.down_input) == len(result.attention) == 3
    assert result.residual[0].shape == (2, 32, 32) and result.down_input[0].shape == (2, 32, 128)
    heads = 2 if attention == "differential" else 4
    assert result.attention[2]["probs"].shape == (2, heads, 32, 32)
    assert hooks_left(model) == 0 and model.training
    assert not any(b.attn.probe for b in model.transformer.h)
    # the residual after the last block is what ln_f sees
    torch.testing.assert_close(model.lm_head(model.transformer.ln_f(result.residual[-1])), model.eval()(idx))


@pytest.mark.parametrize("style", ["gpt2", "llama"])
def test_bondarenko_figures_cover_their_tensor_set(style):
    """avg/max kurtosis and max inf-norm are over every block output, both norm outputs of each
    block, the attention and FFN output projections' outputs and the final norm's output,
    recomputed here independently with plain hooks; max_layer_inf_norm over block outputs only."""
    torch.manual_seed(0)
    model = GPT(vocab_size=64, block_size=32, n_layer=2, n_head=4, n_embd=32, style=style).eval()
    idx = torch.randint(0, 64, (3, 32))
    seen = []
    modules = [m for b in model.transformer.h for m in (b.ln_1, b.attn.c_proj, b.ln_2, b.mlp.c_proj, b)]
    handles = [m.register_forward_hook(lambda mod, i, out: seen.append(out.detach()))
               for m in modules + [model.transformer.ln_f]]
    with torch.no_grad():
        model(idx)
    for h in handles:
        h.remove()
    assert len(seen) == 2 * 5 + 1

    def kurt(h):  # per sequence mu4 / sigma^4 over its T*C values, then the mean over sequences
        x = h.reshape(h.shape[0], -1).double()
        d = x - x.mean(1, keepdim=True)
        return ((d**4).mean(1) / (d**2).mean(1) ** 2).mean().item()

    def inf(h):
        return h.reshape(h.shape[0], -1).abs().amax(1).mean().item()

    values = run_measures(Probe(probe(model, idx), model))
    assert values["outliers/act/avg_kurtosis"] == pytest.approx(sum(map(kurt, seen)) / len(seen), rel=1e-4)
    assert values["outliers/act/max_kurtosis"] == pytest.approx(max(map(kurt, seen)), rel=1e-4)
    assert values["outliers/act/max_inf_norm"] == pytest.approx(max(map(inf, seen)), rel=1e-5)
    blocks = [t for t, m in zip(seen, modules) if m in list(model.transformer.h)]
    assert values["outliers/act/max_layer_inf_norm"] == pytest.approx(max(map(inf, blocks)), rel=1e-5)


def test_probe_removes_hooks_on_error():
    model = small_gpt()
    with pytest.raises(IndexError):
        probe(model, torch.full((1, 8), 999))  # token id outside the vocabulary
    assert hooks_left(model) == 0 and not model.transformer.h[0].attn.probe


def test_planted_activation_outlier_is_reported():
    """One residual channel x1000 (through a hook): top1/median rises by about that factor."""
    model = small_gpt(n_layer=3)
    idx = torch.randint(0, 64, (4, 32))
    before = run_measures(Probe(probe(model, idx), model))
    channel = 7

    def plant(module, inputs, output):
        output = output.clone()
        output[..., channel] *= 1000
        return output

    handle = model.transformer.h[1].register_forward_hook(plant)
    try:
        after = run_measures(Probe(probe(model, idx), model))
    finally:
        handle.remove()
    ratio = after["outliers/act/top1_over_median/layer_1"] / before["outliers/act/top1_over_median/layer_1"]
    assert 200 < ratio < 2000, ratio
    # at init |h| ~ 0.02, so the planted values (~20) stay under Sun et al.'s absolute 100;
    # the ratio-only count (>= 1000 x median) is the one that fires, as expected at small scale
    assert after["outliers/act/massive_ratio/layer_1"] > 0 and before["outliers/act/massive_ratio/total"] == 0
    assert after["outliers/act/massive/total"] == 0
    assert after["outliers/act/top_channel"] == channel and after["outliers/act/top_channel_layer"] >= 1


class _Trainer(SimpleNamespace):
    """The few Trainer attributes ConvergenceMonitor reads."""


def test_convergence_monitor_records_first_crossings_and_auc(tmp_path):
    monitor = ConvergenceMonitor(targets=[2.0, 1.5])
    trainer = _Trainer(sanity_checking=False, state=SimpleNamespace(fn="fit"), callback_metrics={},
                       datamodule=SimpleNamespace(batch_size=4, block_size=8), accumulate_grad_batches=2,
                       world_size=1, is_global_zero=True, default_root_dir=str(tmp_path), loggers=[], global_step=0)
    monitor.on_train_start(trainer, None)
    for step, loss in [(10, 2.4), (20, 1.9), (30, 1.95), (40, 1.4)]:
        trainer.global_step, trainer.callback_metrics = step, {"val/loss": torch.tensor(loss)}
        monitor.on_validation_end(trainer, None)
    monitor.on_train_end(trainer, None)
    trainer.state.fn = "validate"  # train.py's evaluation after fit, at the same step: no new point
    monitor.on_validation_end(trainer, None)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["convergence/step_to_2"] == 20 and summary["convergence/tokens_to_2"] == 20 * 4 * 8 * 2
    assert summary["convergence/step_to_1.5"] == 40
    auc = (10 * (2.4 + 1.9) / 2 + 10 * (1.9 + 1.95) / 2 + 10 * (1.95 + 1.4) / 2) / 30
    assert summary["convergence/val_loss_auc"] == pytest.approx(auc)
    assert summary["convergence/final_val_ppl"] == pytest.approx(math.exp(1.4))
    trainer.global_step, trainer.callback_metrics = 50, {"val/loss": torch.tensor(1.2)}  # a later evaluation
    monitor.on_validation_end(trainer, None)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["convergence/final_val_loss"] == pytest.approx(1.2) and len(monitor.curve) == 5


def csv_keys(run_dir) -> list[str]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return next(csv.reader(f))


@pytest.mark.parametrize("attention", ["softmax", "explicit_scale"])
def test_nano_run_logs_every_metric_and_draws_plots(tmp_path, corpus_glob, cache_dir, attention, monkeypatch):
    saved = capture_saved_figures(monkeypatch)
    overrides = [o for o in TINY if not o.startswith(("model.", "callbacks.outlier"))]  # the real nano model
    cfg = compose_train(
        tmp_path, *overrides, f"attention={attention}", "data=text_files", f"data.corpus.paths=[{corpus_glob}]",
        "trainer.max_steps=20", "trainer.val_check_interval=10", "callbacks.outlier_monitor.every_n_steps=10",
        "callbacks.outlier_monitor.plots=true", "callbacks.convergence_monitor.targets=[4.0,0.1]",
        cache_dir=cache_dir,
    )
    train.train(cfg)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["convergence/step_to_4"] == 10 and summary["convergence/step_to_0.1"] is None
    assert set(summary) >= {"emergence/outliers/act/top1_over_median/max", "emergence/outliers/attn/sink_rate",
                            "outliers/act/avg_kurtosis", "outliers/attn/sink_rate", "convergence/val_loss_auc"}
    keys = [f"outliers/{kind}/{name}/layer_{l}" for kind in ("act", "down") for l in range(4)
            for name in ("top1", "top2", "top3", "median", "top1_over_median", "massive", "massive_ratio",
                         "token_outliers", "kurtosis", "inf_norm")]
    keys += [f"outliers/attn/{name}/layer_{l}" for l in range(4)
             for name in ("first_token_share", "entropy", "max_logit", "null_mass")]
    keys += [f"outliers/weight/down_proj_col_ratio/layer_{l}" for l in range(4)]
    keys += ["outliers/act/max_inf_norm", "outliers/attn/sink_rate", "outliers/weight/down_proj_col_ratio/max",
             "outliers/weight/kurtosis/max", "outliers/act/top_channel_initial_share"]
    if attention == "explicit_scale":
        keys += [f"outliers/attn/scale/{s}/layer_{l}" for l in range(4) for s in ("mean", "min", "max")]
    for key in keys:
        assert set(read_metric(tmp_path, key)) == {0, 10, 20}, key
    for name in ("layer_profile", "channel_heatmap", "attention_maps", "outliers_over_steps"):
        assert (tmp_path / "plots" / f"{name}.png").is_file()
    # the plots of the end of training show the last probe's values (step 20)
    last = {key: values[20] for key in csv_keys(tmp_path) if 20 in (values := read_metric(tmp_path, key))}
    check_probe_figures(saved[-1], last, n_layer=4)
