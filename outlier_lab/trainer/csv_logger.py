"""A CSVLogger that survives resumption: Lightning's deletes an existing metrics.csv,
which would throw away the history of a run that is resumed in the same directory."""

from __future__ import annotations

import csv
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment


class ResumableCSVLogger(CSVLogger):
    """Keeps the rows of an old ``metrics.csv`` up to ``resume_step``; the rows after it are
    work that the resumed run redoes and logs again. With ``resume_step=None`` (a fresh
    start) an old file is replaced."""

    def __init__(self, *args, resume_step: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.resume_step = resume_step
        self._history_restored = False

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._history_restored:
            return super().experiment
        # Read the old rows before Lightning's writer deletes the file, then log them again
        # through the writer and write them out at once, so a crash before the first flush
        # does not lose them.
        history = self._rows_to_keep(Path(self.log_dir) / ExperimentWriter.NAME_METRICS_FILE)
        writer = super().experiment
        for row in history:
            writer.log_metrics(row, int(_step(row)))
        writer.save()
        self._history_restored = True
        return writer

    def _rows_to_keep(self, path: Path) -> list[dict[str, str]]:
        if self.resume_step is None or not path.is_file():
            return []
        with open(path, newline="") as f:
            return [row for row in csv.DictReader(f) if _step(row) <= self.resume_step]


def _step(row: dict) -> float:
    try:
        return float(row.get("step") or 0)
    except ValueError:
        return 0.0
