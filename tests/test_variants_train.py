"""Every registered variant trains through train.py, alone and in one Hydra multirun."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import train
from outlier_lab.models.attention import registered_names
from tests.helpers import compose_train, read_metric

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.parametrize("name", registered_names())
def test_variant_trains_30_steps_on_nano_with_falling_loss(tmp_path, name, corpus_glob, cache_dir):
    cfg = compose_train(
        tmp_path, f"attention={name}", "model=nano", "data=text_files", f"data.corpus.paths=[{corpus_glob}]",
        "data.val_every=10", "data.batch_size=8", "data.val_batches=2", "trainer.max_steps=30",
        "trainer.val_check_interval=30", "trainer.log_every_n_steps=1", "optim.lr=3e-3", "logger=csv",
        "callbacks.progress_bar=null", "callbacks.model_summary=null", "eval.compression=[w8a8]", cache_dir=cache_dir,
    )
    final = train.train(cfg)
    losses = read_metric(tmp_path, "train/loss")
    first, last = sum(losses[s] for s in range(5)) / 5, sum(losses[s] for s in range(25, 30)) / 5
    assert last < first - 0.5, (first, last)  # from ~5.5 (uniform over bytes) towards ~3
    assert final["val/loss"] < 3.5


@pytest.mark.slow
def test_multirun_over_all_variants_completes(tmp_path, corpus_glob):
    names = registered_names()
    result = subprocess.run(
        [sys.executable, "train.py", "-m", f"attention={','.join(names)}", "trainer.max_steps=2",
         "trainer.val_check_interval=2", "model.n_layer=1", "model.n_embd=32", "model.n_head=2",
         "model.block_size=32", "data=text_files", f"data.corpus.paths=[{corpus_glob}]", "data.val_every=10",
         "data.batch_size=2", "data.val_batches=1", "logger=none", "callbacks.progress_bar=null",
         "eval.compression=[]", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "torch_threads=1",
         f"hydra.sweep.dir={tmp_path}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "OUTLIER_LAB_CACHE": str(tmp_path / "cache")},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = sorted(p for p in tmp_path.iterdir() if (p / "metrics.csv").is_file())
    assert len(jobs) == len(names)
    assert {p.name.split("_s0_")[0].split("_", 1)[1] for p in jobs} == set(names)
