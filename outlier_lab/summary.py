"""Run-level summary values (emergence steps, convergence, compression results): kept in
``summary.json`` in the run directory, so runs compare without wandb, and mirrored to the
wandb run summary when a WandbLogger is attached."""

from __future__ import annotations

import json
import os
from pathlib import Path

from lightning.pytorch.loggers import WandbLogger


def summary_path(trainer) -> Path:
    return Path(trainer.default_root_dir) / "summary.json"


def merge_summary(path: Path, values: dict) -> None:
    """Merge ``values`` into the JSON file at path (created if missing), atomically."""
    summary = json.loads(path.read_text()) if path.is_file() else {}
    summary.update(values)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(summary, indent=2, sort_keys=True))
    os.replace(tmp, path)


def update_summary(trainer, values: dict[str, float | int | None]) -> None:
    """Merge ``values`` into summary.json and into wandb's run summary."""
    if not trainer.is_global_zero or not values:
        return
    merge_summary(summary_path(trainer), values)
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.experiment.summary.update(values)


def log_metrics(trainer, metrics: dict[str, float]) -> None:
    """Send metrics straight to every logger at the current step (not through
    LightningModule.log, which drops values between its log_every_n_steps), and flush them:
    after training no one else will."""
    if not trainer.is_global_zero:
        return
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=trainer.global_step)
        logger.save()
