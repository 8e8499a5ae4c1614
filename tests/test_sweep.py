"""Sweeps: experiment configs, job directories, failing jobs, the SLURM launcher config."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import get_class

from outlier_lab.sweep import job_dirname, sweep_group
from tests.helpers import CONFIGS

ROOT = Path(__file__).resolve().parents[1]


def compose_hydra(*overrides):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(config_name="train", overrides=["paths.output_dir=/tmp/x", *overrides], return_hydra_config=True)


@pytest.mark.parametrize("experiment, variants", [
    ("paper_variants", "softmax,v_bias,ca_bias,attn_bias,explicit_scale,sigmoid"),
    ("outlier_free", "glob(*)"),
])
def test_experiment_configs_define_their_sweeps(experiment, variants):
    cfg = compose_hydra(f"+experiment={experiment}")
    assert cfg.hydra.sweeper.params.attention == variants and cfg.hydra.sweeper.params.seed == "0,1"


def test_slurm_launcher_config_composes_and_resolves():
    cfg = compose_hydra("hydra/launcher=slurm")
    launcher = cfg.hydra.launcher
    assert get_class(launcher._target_).__name__ == "SlurmLauncher"
    assert launcher.gpus_per_node == 1 and launcher.tasks_per_node == 1 and launcher.max_num_timeout > 0


def test_job_dirnames_are_short_and_unique():
    long = ",".join(f"key{i}=value{i}" for i in range(40))
    a, b = job_dirname(3, "softmax", 0, long), job_dirname(3, "softmax", 0, long + ",x=1")
    assert len(a) <= 100 and a != b and a.startswith("3_softmax_s0_")
    assert job_dirname(1, "sink", 2, "data.corpus.paths=[/a/b]") == "1_sink_s2_data.corpus.paths=[_a_b]"
    assert sweep_group() is None  # not inside a Hydra multirun


def test_a_failing_job_does_not_stop_the_sweep(tmp_path, corpus_glob):
    result = subprocess.run(
        [sys.executable, "train.py", "-m", "model.n_head=3,2", "trainer.max_steps=2", "trainer.val_check_interval=2",
         "model.n_layer=1", "model.n_embd=32", "model.block_size=32", "data=text_files",
         f"data.corpus.paths=[{corpus_glob}]", "data.val_every=10", "data.batch_size=2", "data.val_batches=1",
         "logger=none", "callbacks.progress_bar=null", "eval.compression=[]", f"hydra.sweep.dir={tmp_path}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "OUTLIER_LAB_CACHE": str(tmp_path / "cache")},
    )
    assert result.returncode == 1  # reported at the end ...
    failed, ok = sorted(tmp_path.glob("0_*")), sorted(tmp_path.glob("1_*"))
    assert "model.n_head=3 does not divide model.n_embd=32" in (failed[0] / "FAILED").read_text()
    assert (ok[0] / "summary.json").is_file() and not (ok[0] / "FAILED").exists()  # ... after the next job ran
    assert "1 job(s) of the sweep failed" in " ".join(result.stderr.split())


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_matches_a_single_process(tmp_path, corpus_glob):
    """trainer=ddp with 2 gloo processes x batch 2 gives the loss of one process with batch 4."""
    common = ["trainer.max_steps=3", "trainer.val_check_interval=3", "trainer.log_every_n_steps=1",
              "model.n_layer=1", "model.n_embd=32", "model.n_head=2", "model.block_size=32", "data=text_files",
              f"data.corpus.paths=[{corpus_glob}]", "data.val_every=10", "data.val_batches=1", "logger=csv",
              "callbacks=minimal", "callbacks.progress_bar=null", "eval.compression=[]"]
    env = {**os.environ, "OUTLIER_LAB_CACHE": str(tmp_path / "cache")}
    runs = {"ddp": ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true",
                    "data.batch_size=2"],
            "single": ["data.batch_size=4"]}
    for name, extra in runs.items():
        result = subprocess.run([sys.executable, "train.py", *common, *extra, f"hydra.run.dir={tmp_path / name}"],
                                cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
        assert result.returncode == 0, result.stderr[-3000:]
    from tests.helpers import read_metric
    ddp, single = (read_metric(tmp_path / n, "train/loss") for n in ("ddp", "single"))
    for step in (0, 1):
        assert ddp[step] == pytest.approx(single[step], rel=1e-5), step


def test_optuna_lr_search_config_composes():
    cfg = compose_hydra("+experiment=lr_search")
    assert get_class(cfg.hydra.sweeper._target_).__name__ == "OptunaSweeper"
    assert cfg.hydra.sweeper.direction == "minimize" and "interval" in cfg.hydra.sweeper.params["optim.lr"]


@pytest.mark.slow
def test_sweep_then_report(tmp_path, corpus_glob):
    """The README loop: 2 variants x 2 seeds on nano, then the offline report."""
    sweep = tmp_path / "sweep"
    result = subprocess.run(
        [sys.executable, "train.py", "-m", "attention=softmax,explicit_scale", "seed=0,1", "model=nano",
         "trainer.max_steps=12", "trainer.val_check_interval=6", "data=text_files", f"data.corpus.paths=[{corpus_glob}]",
         "data.val_every=10", "data.batch_size=4", "data.val_batches=2", "logger=csv", "callbacks.progress_bar=null",
         "callbacks.outlier_monitor.every_n_steps=6", "callbacks.outlier_monitor.plots=false",
         f"hydra.sweep.dir={sweep}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "OUTLIER_LAB_CACHE": str(tmp_path / "cache")},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = [p for p in sweep.iterdir() if (p / "summary.json").is_file()]
    assert len(runs) == 4
    report = subprocess.run([sys.executable, "-m", "outlier_lab.report", str(sweep), "--out", str(tmp_path / "report")],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr[-3000:]
    text = (tmp_path / "report" / "report.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and ("softmax" in line or "explicit_scale" in line)
            and "±" in line]
    assert len(rows) == 2, text
    for png in ("loss_curves.png", "outliers_vs_step.png", "layer_profile.png", "extreme_tokens.png"):
        assert (tmp_path / "report" / png).stat().st_size > 5000
