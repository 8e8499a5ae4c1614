"""A CSVLogger that survives resumption: Lightning's deletes an existing metrics.csv,
which would throw away the history of a run that is resumed in the same directory."""

from __future__ import annotations

import csv
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment


class _KeepingWriter(ExperimentWriter):
    def _check_log_dir_exists(self) -> None:  # keep the file; ResumableCSVLogger trims it
        pass


class ResumableCSVLogger(CSVLogger):
    """Appends to ``metrics.csv``. Rows logged after ``resume_step`` (work that the resumed
    run will redo) are dropped; with ``resume_step=None`` an old file is replaced."""

    def __init__(self, *args, resume_step: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.resume_step = resume_step

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._experiment = _KeepingWriter(log_dir=self.log_dir)
            path = Path(self._experiment.metrics_file_path)
            if path.is_file():
                with open(path, newline="") as f:
                    reader = csv.DictReader(f)
                    header = list(reader.fieldnames or [])
                    rows = [r for r in reader if self.resume_step is not None and _step(r) <= self.resume_step]
                if rows:
                    with open(path, "w", newline="") as f:
                        writer = csv.DictWriter(f, fieldnames=header)
                        writer.writeheader()
                        writer.writerows(rows)
                    self._experiment.metrics_keys = header
                else:
                    path.unlink()
        return self._experiment


def _step(row: dict) -> float:
    try:
        return float(row.get("step") or 0)
    except ValueError:
        return 0.0
