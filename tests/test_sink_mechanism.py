"""The mechanism study's recipe (+experiment=sink_mechanism): it composes to the documented
settings, its parallel launcher runs jobs in separate single-threaded processes, a failing job
leaves the others complete, and a run on the task carries the per-domain metrics through the
summary, analyze.py and the report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

import analyze
from outlier_lab import report
from tests.helpers import CONFIGS

ROOT = Path(__file__).resolve().parents[1]
SHORT = ("trainer.max_steps=4", "trainer.val_check_interval=2", "callbacks.outlier_monitor.every_n_steps=2",
         "callbacks.progress_bar=null", "callbacks.model_summary=null", "eval.compression=[w8a8]",
         "data.val_batches=1", "data.source_bytes=200000")


def test_the_recipe_composes():
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["paths.output_dir=/tmp/x", "+experiment=sink_mechanism"],
                      return_hydra_config=True)
    assert cfg.data._target_ == "outlier_lab.data.bigram_backcopy.BigramBackcopyDataModule"
    assert (cfg.model.n_layer, cfg.model.n_head, cfg.model.block_size, cfg.model.n_embd) == (1, 1, 64, 64)
    # the recipe the study's numbers come from (docs/mechanism.md): a change here changes every verdict
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.min_lr, cfg.optim.weight_decay, cfg.optim.warmup_steps) == (
        "adamw", 3.0e-3, 3.0e-4, 1.0e-4, 50)
    assert (cfg.trainer.max_steps, cfg.trainer.val_check_interval, cfg.data.batch_size) == (1000, 250, 32)
    assert (cfg.callbacks.outlier_monitor.every_n_steps, cfg.callbacks.outlier_monitor.probe_sequences) == (50, 32)
    assert cfg.torch_threads == 1 and cfg.hydra.launcher.n_jobs == 2
    assert "JoblibLauncher" in cfg.hydra.launcher._target_
    assert cfg.hydra.sweeper.params.seed == "0,1,2"
    assert cfg.hydra.sweeper.params.attention == "glob(*,exclude=differential)"


def test_the_replication_is_the_recipe_with_ten_seeds_of_the_bistable_variants():
    def composed(experiment):
        with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
            return compose(config_name="train", overrides=["paths.output_dir=/tmp/x", f"+experiment={experiment}"],
                           return_hydra_config=True)

    mechanism, replication = composed("sink_mechanism"), composed("sink_replication")
    params = replication.hydra.sweeper.params
    assert params.seed == "range(0,10)"
    assert params.attention.split(",") == ["softmax", "attn_bias", "softmax1", "sink", "explicit_scale", "gated_g1"]
    assert replication.hydra.launcher == mechanism.hydra.launcher
    for cfg in (mechanism, replication):  # every setting of a run is the recipe's
        del cfg.hydra
    assert replication == mechanism


@pytest.mark.slow
def test_the_parallel_sweep_completes_its_jobs_and_survives_a_failure(tmp_path):
    """softmax and explicit_scale complete in two worker processes; differential with one head
    fails with its one-line reason and the sweep still exits after the others finished."""
    sweep = tmp_path / "sweep"
    result = subprocess.run(
        [sys.executable, "train.py", "-m", "+experiment=sink_mechanism", "attention=softmax,explicit_scale,differential",
         "seed=0", *SHORT, f"hydra.sweep.dir={sweep}"],
        cwd=ROOT, capture_output=True, text=True, timeout=400, env={**os.environ, "WANDB_MODE": "disabled"},
    )
    assert result.returncode == 1, result.stderr[-2000:]  # the failure is reported at the end
    runs = {path.name.split("_s0_")[0]: path for path in sweep.iterdir() if path.is_dir()}
    assert "differential attention pairs heads: model.n_head=1 must be even" in (
        runs["2_differential"] / "FAILED").read_text()
    for name in ("0_softmax", "1_explicit_scale"):
        summary = json.loads((runs[name] / "summary.json").read_text())
        assert summary["outliers/domain/active/first_token_share"] >= 0
        assert summary["compress/w8a8/ppl_ratio"] > 0
    # the report reads the sweep: a column per domain, the failed job listed
    out = tmp_path / "report"
    subprocess.run([sys.executable, "-m", "outlier_lab.report", str(sweep), "--out", str(out)], cwd=ROOT, check=True,
                   capture_output=True, timeout=300)
    text = (out / "report.md").read_text()
    assert "first-token share (dormant)" in text and "excess loss (active)" in text
    assert "differential" in text and (out / "extreme_tokens.png").is_file()


@pytest.mark.slow
def test_a_run_on_the_task_carries_the_domains_into_analyze(tmp_path):
    from tests.helpers import compose_train
    import train

    run_dir = tmp_path / "run"
    cfg = compose_train(run_dir, "+experiment=sink_mechanism", "logger=none", *SHORT)
    train.train(cfg)
    summary = json.loads((run_dir / "summary.json").read_text())
    keys = {key for key in summary if key.startswith("outliers/domain/")}
    assert {f"outliers/domain/{d}/{m}" for d in ("active", "dormant")
            for m in ("first_token_share", "sink_rate", "null_mass", "entropy", "loss", "excess_loss")} <= keys
    # analyze.py on the checkpoint: the same per-domain numbers, from the run's own probe windows
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        acfg = compose(config_name="analyze", overrides=[f"ckpt={run_dir / 'checkpoints' / 'last.ckpt'}",
                                                         f"paths.output_dir={tmp_path / 'analysis'}", "windows=32"])
    metrics = analyze.analyze(acfg)
    for key in ("outliers/domain/dormant/first_token_share", "outliers/domain/active/excess_loss"):
        assert metrics[key] == pytest.approx(summary[key], rel=1e-5)
    # a text file cannot be read by a model of this task: one clear line
    text = tmp_path / "t.txt"
    text.write_text("hello world " * 50)
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        bad = compose(config_name="analyze", overrides=[f"ckpt={run_dir / 'checkpoints' / 'last.ckpt'}",
                                                        f"text={text}", f"paths.output_dir={tmp_path / 'a2'}"])
    with pytest.raises(Exception, match="without a text tokenizer"):
        analyze.analyze(bad)
