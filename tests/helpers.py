"""Test-only pieces: a tiny run, metrics.csv reading, and callbacks that interrupt or corrupt a run."""

from __future__ import annotations

import csv
from pathlib import Path

import lightning as L
import torch

from train import CONFIGS, compose_config  # noqa: F401  (CONFIGS: the tests compose evaluate.yaml too)


def compose_train(output_dir: Path, *overrides: str, cache_dir: Path | None = None):
    """The real configs, composed as `python train.py OVERRIDES` would, into output_dir;
    cache_dir keeps the tokenized corpus of every test in one place."""
    return compose_config(output_dir, *([f"data.cache_dir={cache_dir}"] if cache_dir else []), *overrides)


# A tiny model and run that train in seconds on 2 cores.
TINY = (
    "model.n_layer=2", "model.n_embd=32", "model.n_head=2", "model.block_size=32",
    "data.batch_size=4", "data.val_batches=2", "data.val_every=10", "trainer.log_every_n_steps=1",
    "callbacks.progress_bar=null", "callbacks.model_summary=null", "callbacks.outlier_monitor.plots=false", "logger=csv",
)


def read_metric(run_dir: Path, key: str) -> dict[int, float]:
    """{step: value} for one column of a run's metrics.csv."""
    with open(Path(run_dir) / "metrics.csv", newline="") as f:
        return {int(r["step"]): float(r[key]) for r in csv.DictReader(f) if r.get(key)}


class InterruptAt(L.Callback):
    """Raises KeyboardInterrupt-like failure at a given global step, as a killed job would."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise RuntimeError(f"simulated crash at step {self.step}")


class PoisonWeightsAt(L.Callback):
    """Sets one weight to NaN before the given step, so that step's loss is NaN."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            with torch.no_grad():
                pl_module.model.lm_head.weight[0, 0] = float("nan")


class StallCheckpointWriteAt(L.Callback):
    """From the given step on, the next checkpoint write stops halfway: it writes half of the
    file's bytes, touches ``flag`` and sleeps, so that a test can kill -9 the process there."""

    def __init__(self, step: int, flag: str):
        self.step, self.flag = step, flag

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        if trainer.global_step < self.step:
            return
        real_save = torch.save

        def half_then_stall(obj, f, *args, **kwargs):
            import io
            import time

            buffer = io.BytesIO()
            real_save(obj, buffer, *args, **kwargs)
            f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
            f.flush()
            Path(self.flag).touch()
            time.sleep(600)

        torch.save = half_then_stall
