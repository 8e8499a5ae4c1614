"""Sweeps: a failing job is recorded in its run directory instead of stopping the sweep,
and a Hydra callback lists the failures when the sweep ends."""

from __future__ import annotations

import hashlib
import sys
import traceback
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from rich.console import Console
from rich.markup import escape

from outlier_lab.errors import find_config_error

FAILED = "FAILED"


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def sweep_group() -> str | None:
    """The wandb group of a multirun job: its sweep directory's name; None for single runs."""
    if not in_multirun():
        return None
    return "_".join(Path(HydraConfig.get().sweep.dir).parts[-2:])


def job_dirname(num: int, attention: str, seed: int, override_dirname: str, limit: int = 100) -> str:
    """A sweep job's directory name: number, variant, seed, then the overrides, slashes
    replaced; long ones are cut and suffixed with a hash, to stay unique and within limits."""
    name = f"{num}_{attention}_s{seed}_{override_dirname}".replace("/", "_")
    if len(name) <= limit:
        return name
    return f"{name[: limit - 9]}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"


def record_failure(output_dir: str | Path, error: BaseException) -> None:
    """Write the job's error into <run dir>/FAILED (for a reported ConfigError, its message)."""
    error = find_config_error(error) or error
    path = Path(output_dir) / FAILED
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(traceback.format_exception(type(error), error, error.__traceback__)))


class SweepReport(Callback):
    """At the end of a multirun, list the jobs that failed (and exit 1 if any did)."""

    def on_multirun_end(self, config, **kwargs) -> None:
        failed = sorted(Path(config.hydra.sweep.dir).glob(f"*/{FAILED}"))
        if not failed:
            return
        console = Console(stderr=True)
        console.print(f"[bold red]{len(failed)} job(s) of the sweep failed[/] (the others completed):")
        for path in failed:
            last = path.read_text().strip().splitlines()[-1]
            console.print(f"  {escape(str(path.parent))}: {escape(last)}")
        sys.exit(1)
