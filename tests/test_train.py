"""train.py end to end, through the real configs: training, logging, resume, failures."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import hydra
import pytest
import torch

import train
from outlier_lab.errors import ConfigError, find_config_error
from outlier_lab.models.lit_gpt import LitGPT, NonFiniteLossError
from tests.helpers import TINY, compose_train, read_metric

ROOT = Path(__file__).resolve().parents[1]
GROUPS = {g: sorted(p.stem for p in (ROOT / "configs" / g).glob("*.yaml")) for g in
          ["attention", "model", "data", "trainer", "logger", "callbacks"]}


def tiny(tmp_path, corpus_glob, cache_dir, *overrides, name="run"):
    return compose_train(tmp_path / name, *TINY, "data=text_files", f"data.corpus.paths=[{corpus_glob}]",
                         *overrides, cache_dir=cache_dir)


@pytest.mark.parametrize("group, option", [(g, o) for g, opts in GROUPS.items() for o in opts])
def test_every_config_option_composes(tmp_path, group, option):
    overrides = [f"{group}={option}"]
    if group == "data" and option == "text_files":
        overrides.append("data.corpus.paths=[x]")
    cfg = compose_train(tmp_path, *overrides)
    assert cfg.trainer._target_ == "lightning.pytorch.Trainer"
    if group == "attention":
        assert cfg.model.attention.name == option
    if group == "model":
        assert cfg.model.n_embd % cfg.model.n_head == 0 and cfg.data.block_size == cfg.model.block_size


def test_model_sizes_match_the_issue(tmp_path):
    sizes = {m: compose_train(tmp_path, f"model={m}").model for m in ("nano", "small", "gpt2")}
    assert [(s.n_layer, s.n_embd, s.n_head, s.block_size) for s in sizes.values()] == [
        (4, 128, 4, 256), (6, 384, 6, 256), (12, 768, 12, 1024)]
    gpt2 = hydra.utils.instantiate(sizes["gpt2"], vocab_size=50257)
    assert 123e6 < gpt2.num_parameters() < 125e6  # GPT-2 small, tied embeddings


def test_fsdp_strategy_config_instantiates(tmp_path):
    strategy = hydra.utils.instantiate(compose_train(tmp_path, "trainer=fsdp").trainer.strategy)
    from outlier_lab.models.gpt import Block
    assert type(strategy).__name__ == "FSDPStrategy" and Block in strategy.kwargs["auto_wrap_policy"]._module_classes


def test_tiny_run_writes_metrics_checkpoints_and_beats_unigram(tmp_path, corpus_glob, cache_dir):
    cfg = tiny(tmp_path, corpus_glob, cache_dir, "trainer.max_steps=60", "trainer.val_check_interval=30",
               "optim.lr=1e-2")
    final = train.train(cfg)
    run = tmp_path / "run"
    losses = read_metric(run, "train/loss")
    assert sorted(losses)[:3] == [0, 1, 2] and max(losses) == 59
    val = read_metric(run, "val/loss")
    assert final["val/loss"] == pytest.approx(val[max(val)], rel=1e-5)
    assert final["val/loss"] < 3.2  # unigram entropy of Python bytes is ~3.3 nats; a uniform guess is 5.55
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 60  # the final state
    assert len(list((run / "checkpoints").glob("step*.ckpt"))) == 1  # the best by val loss
    assert read_metric(run, "train/device/items_per_sec")  # tokens/s
    assert read_metric(run, "train/lr/pg1")


def test_explicit_scale_trains_and_its_scale_learns(tmp_path, corpus_glob, cache_dir):
    cfg = tiny(tmp_path, corpus_glob, cache_dir, "attention=explicit_scale", "trainer.max_steps=20",
               "trainer.val_check_interval=20", "optim.lr=1e-2")
    train.train(cfg)
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    module = LitGPT(**ckpt["hyper_parameters"])
    module.load_state_dict(ckpt["state_dict"])
    bias = module.model.transformer.h[0].attn.context_scale[0].bias
    assert bias.abs().max() > 1e-3  # initialised at 0: it moved, so it received gradients


def test_resume_continues_exactly(tmp_path, corpus_glob, cache_dir):
    """Crash after the step-10 checkpoint, resume to 20: steps 11..20 equal an uninterrupted run."""
    common = ("trainer.max_steps=20", "trainer.val_check_interval=10", "optim.warmup_steps=3")
    straight = tiny(tmp_path, corpus_glob, cache_dir, *common, name="straight")
    train.train(straight)
    crashing = tiny(tmp_path, corpus_glob, cache_dir, *common, "+callbacks.crash._target_=tests.helpers.InterruptAt",
                    "+callbacks.crash.step=13", name="resumed")
    with pytest.raises(RuntimeError, match="simulated crash at step 13"):
        train.train(crashing)
    train.train(tiny(tmp_path, corpus_glob, cache_dir, *common, "ckpt_path=auto", name="resumed"))
    ref, res = read_metric(tmp_path / "straight", "train/loss"), read_metric(tmp_path / "resumed", "train/loss")
    assert sorted(res) == sorted(ref) == list(range(20))  # history kept, redone steps not duplicated
    for step in range(10, 20):
        assert res[step] == pytest.approx(ref[step], rel=1e-6, abs=1e-7), step
    assert read_metric(tmp_path / "resumed", "val/loss")[19] == pytest.approx(
        read_metric(tmp_path / "straight", "val/loss")[19], rel=1e-6)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, corpus_glob, cache_dir):
    cfg = tiny(tmp_path, corpus_glob, cache_dir, "trainer.max_steps=20", "trainer.val_check_interval=5",
               "+callbacks.poison._target_=tests.helpers.PoisonWeightsAt", "+callbacks.poison.step=7")
    with pytest.raises(NonFiniteLossError, match="at step 7"):
        train.train(cfg)
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 5
    assert all(torch.isfinite(t).all() for t in ckpt["state_dict"].values())


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="corrupt"):
        train.resolve_ckpt_path(str(bad), tmp_path)
    assert train.resolve_ckpt_path("auto", tmp_path) == (None, None)


def test_a_kill_during_a_checkpoint_write_leaves_a_resumable_run(tmp_path, corpus_glob, cache_dir):
    """kill -9 while step 10's checkpoint is half written: the step-5 checkpoints are intact, and
    ckpt_path=auto resumes from them and finishes. A last.ckpt cut short by other means (a
    full disk) is skipped for the newest checkpoint that loads, with a message."""
    import os
    import signal
    import time

    run_dir, flag = tmp_path / "run", tmp_path / "stalled"
    common = (*TINY, "data=text_files", f"data.corpus.paths=[{corpus_glob}]", f"data.cache_dir={cache_dir}",
              "trainer.max_steps=10", "trainer.val_check_interval=5", "optim.warmup_steps=2", "eval.compression=[]",
              "callbacks.outlier_monitor.every_n_steps=5", f"hydra.run.dir={run_dir}")
    job = subprocess.Popen([sys.executable, "train.py", *common, "+callbacks.stall._target_=tests.helpers.StallCheckpointWriteAt",
                            "+callbacks.stall.step=10", f"+callbacks.stall.flag={flag}"],
                           cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not flag.exists() and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert flag.exists(), f"the run never reached the step-10 checkpoint (exit {job.poll()})"
    os.kill(job.pid, signal.SIGKILL)
    job.wait()
    checkpoints = run_dir / "checkpoints"
    assert {p.name for p in checkpoints.glob("*.ckpt")} == {"last.ckpt", next(checkpoints.glob("step000005*")).name}
    assert torch.load(checkpoints / "last.ckpt", weights_only=True)["global_step"] == 5
    assert list(checkpoints.glob(".*.partial")), "the half-written file should be the temporary one"

    train.train(compose_train(run_dir, *common[:-1]))
    assert sorted(read_metric(run_dir, "train/loss")) == list(range(10))
    assert not list(checkpoints.glob(".*.partial")), "the killed writer's temporary file is cleaned up"
    best = next(checkpoints.glob("step000010*"))
    (checkpoints / "last.ckpt").write_bytes((checkpoints / "last.ckpt").read_bytes()[:1000])
    assert train.resolve_ckpt_path("auto", run_dir) == (str(best), 10)


def test_bad_top_level_values_are_one_clear_line(tmp_path):
    cases = {"seed=abc": "seed='abc': give an integer",
             "trainer.max_steps=-5": "trainer.max_steps=-5: give a positive number of steps",
             "trainer.val_check_interval=0": "trainer.val_check_interval=0: give a positive number",
             "trainer.val_check_interval=1.5": "trainer.val_check_interval=1.5: give a positive number"}
    for override, message in cases.items():
        with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
            train.check_run_keys(compose_train(tmp_path, override))
    train.check_run_keys(compose_train(tmp_path, "trainer.val_check_interval=0.5"))  # a fraction of an epoch


@pytest.mark.parametrize("override, message", [
    ("optim.lr=-1", "optim.lr=-1: give a positive number"),
    ("optim.min_lr=0.5", "optim.min_lr=0.5: give a number from 0 to optim.lr=0.001"),
    ("optim.weight_decay=-0.1", "optim.weight_decay=-0.1: give a number >= 0"),
    ("optim.warmup_steps=1.5", "optim.warmup_steps=1.5: give an integer >= 0"),
    ("optim.decay_steps=0", "optim.decay_steps=0: give a positive integer"),
])
def test_bad_schedule_values_are_one_clear_line(tmp_path, override, message):
    cfg = compose_train(tmp_path, override)
    with pytest.raises(Exception) as raised:  # Hydra wraps the constructor's ConfigError
        hydra.utils.instantiate(cfg.module, model={"vocab_size": 16})
    assert message in str(find_config_error(raised.value))


def run_cli(*args, timeout=120, **env):
    import os
    return subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "WANDB_MODE": "offline", **env})


@pytest.mark.parametrize(
    "args, message",
    [
        (["attention=nope"], "Could not find 'attention/nope' Available options in 'attention': attn_bias ca_bias clipped_softmax"),
        (["attention.name=nope"], "registered variants: attn_bias, ca_bias, clipped_softmax"),
        (["model.n_head=5"], "model.n_head=5 does not divide model.n_embd=128"),
        (["data=text_files", "data.corpus.paths=[/no/such/file.txt]"], "data file not found: '/no/such/file.txt'"),
        (["ckpt_path=/no/such.ckpt"], "checkpoint not found"),
        (["seed=abc"], "Configuration error: seed='abc': give an integer"),
        (["thresholds.sink_ep=0.4"], "Key 'sink_ep' not in 'Thresholds'"),
        (["thresholds.sink_eps=high"], "Value 'high' of type 'str' could not be converted to Float"),
        (["attention=softpick", "attention.epz=1"], "Key 'epz' not in 'SoftpickAttentionOptions'"),
    ],
)
def test_bad_input_fails_fast_without_traceback(tmp_path, args, message):
    result = run_cli(*args, f"hydra.run.dir={tmp_path}", "logger=none", "trainer.max_steps=1")
    assert result.returncode != 0
    out = result.stdout + result.stderr
    assert message in " ".join(out.split()), out
    assert "Traceback" not in out


@pytest.mark.slow
def test_default_run_for_50_steps_beats_unigram_and_leaves_offline_wandb_run(tmp_path):
    """`python train.py trainer.max_steps=50` on the default corpus, as a new user runs it."""
    env = {"OUTLIER_LAB_CACHE": str(tmp_path / "cache")}
    env_no_mode = {k: v for k, v in __import__("os").environ.items() if k != "WANDB_MODE"}
    result = subprocess.run(
        [sys.executable, "train.py", "trainer.max_steps=50", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**env_no_mode, **env, "HOME": str(tmp_path)},  # no WANDB_MODE, no netrc: must go offline
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = " ".join(result.stdout.split())
    assert "final val loss" in out and str(tmp_path / "run") in out
    assert "weights_only" not in out + result.stderr  # Lightning's notice about our own last.ckpt save
    val = read_metric(tmp_path / "run", "val/loss")
    unigram = float(out.split("unigram baseline ")[1].split()[0].rstrip(";"))
    assert 3.0 < unigram < 3.6 and val[max(val)] < unigram  # the final validation, after step 50
    assert list((tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb"))


def test_a_tiny_run_console_has_no_noise(tmp_path, corpus_glob, cache_dir):
    """The console of a run with the default callbacks and wandb: no wandb warning about the
    deprecated anonymous setting (Lightning passes it), no Lightning notice that it skips its
    default model summary, and one summary whose FLOPs are counted (not 0)."""
    quiet = ("callbacks.progress_bar=null", "callbacks.model_summary=null", "logger=csv")  # TINY's, dropped here
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SILENT"}  # tests/conftest.py silences wandb
    result = subprocess.run(
        [sys.executable, "train.py", *(o for o in TINY if o not in quiet), "trainer.max_steps=2",
         "eval.compression=[]", "data=text_files", f"data.corpus.paths=[{corpus_glob}]", f"data.cache_dir={cache_dir}",
         f"hydra.run.dir={tmp_path}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env={**env, "WANDB_MODE": "offline"})
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    assert "wandb: Tracking run" in out  # wandb did speak
    assert "anonymous" not in out
    assert "model summary callbacks" not in out
    assert out.count("Total params") == 1
    total_flops = re.search(r"Total FLOPs: ([\d.]+)", out)
    assert total_flops and float(total_flops[1]) > 0, out[-3000:]


def test_a_misspelt_emergence_key_stops_the_run_instead_of_reading_never_emerged(tmp_path, corpus_glob, cache_dir):
    cfg = compose_train(tmp_path, *TINY, "data=text_files", f"data.corpus.paths=[{corpus_glob}]", "trainer.max_steps=2",
                        "+callbacks.outlier_monitor.emergence.no_such_metric=1", cache_dir=cache_dir)
    with pytest.raises(ConfigError, match="emergence: no_such_metric is not a value the probe logs; valid: any "
                                          "logged key, e.g. outliers/"):
        train.train(cfg)
    assert not (tmp_path / "summary.json").exists() or "no_such_metric" not in (tmp_path / "summary.json").read_text()
