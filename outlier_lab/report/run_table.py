"""The per-run CSV: one row per run with what identifies it (variant, seed, model, the sweep's
overrides), how far it got, every number of its ``summary.json`` and, on request, the last value
of chosen metrics.csv curves. Small enough to commit beside a study's page, and enough to rebuild
the report's table without the run directories: ``python -m outlier_lab.report runs.csv``.

    python -m outlier_lab.report SWEEP_DIR --runs-csv docs/x/runs.csv --last 'outliers/attn/value_drain/*'

Reading it back gives ``Run``s whose summaries are the CSV's numbers and which have no curves
(a report from a CSV has its table and no figures).
"""

from __future__ import annotations

import json
import math
from fnmatch import fnmatch
from pathlib import Path

import pandas as pd

from outlier_lab.report.load import Run, number, read_metrics_csv

IDENTITY = ["run", "variant", "model", "seed", "max_steps", "steps_done", "tokens_done", "failed", "overrides"]
LAST = "last/"  # prefix of the columns that hold a curve's last value: last/<metrics.csv key>


class RunTableError(ValueError):
    """A per-run CSV that cannot be read back as runs."""


def runs_frame(runs: list[Run], last: list[str] = ()) -> pd.DataFrame:
    """One row per run: IDENTITY, then every numeric summary key (sorted), then ``last/KEY`` for
    each curve whose key matches a glob of ``last``. Rows sorted by variant, overrides and seed."""
    rows = []
    for run in runs:
        row = {"run": run.name, "variant": run.variant, "model": run.model, "seed": run.seed,
               "max_steps": run.max_steps, "steps_done": run.steps_done, "tokens_done": run.tokens_done,
               "failed": run.failed, "overrides": json.dumps(run.overrides, sort_keys=True)}
        row.update({key: number(value) for key, value in run.summary.items() if number(value) is not None})
        row.update(last_values(run, last))
        rows.append(row)
    frame = pd.DataFrame(rows, columns=IDENTITY) if not rows else pd.DataFrame(rows)
    others = sorted(c for c in frame.columns if c not in IDENTITY and not c.startswith(LAST))
    lasts = sorted(c for c in frame.columns if c.startswith(LAST))
    frame = frame[IDENTITY + others + lasts]
    return frame.sort_values(["variant", "overrides", "seed", "run"], key=lambda s: s.astype(str),
                             ignore_index=True)


def last_values(run: Run, patterns: list[str]) -> dict[str, float]:
    """``last/KEY`` -> the value at the last step of each metrics.csv column matching a glob, read
    from the file itself: any logged column can be chosen, not only the curves the report draws."""
    path = run.path / "metrics.csv"
    if not patterns or not path.is_file():
        return {}
    frame = read_metrics_csv(path, wanted=lambda key: any(fnmatch(key, p) for p in patterns))
    return {LAST + key: float(logged.iloc[-1]) for key, column in frame.items() if len(logged := column.dropna())}


def write_runs_csv(runs: list[Run], path: Path, last: list[str] = ()) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    runs_frame(runs, last).to_csv(path, index=False, float_format="%.10g")
    return path


def sweep_cost(sweep: Path, runs: list[Run]) -> dict:
    """A sweep's jobs, complete runs, wall time and mean training seconds per job. The wall
    time comes from its files: the first job's config to the last job's summary (for a
    resumed sweep, the span of its last writes)."""
    starts = [p.stat().st_mtime for p in sweep.glob("*/.hydra/config.yaml")]
    ends = [p.stat().st_mtime for p in sweep.glob("*/summary.json")]
    train = [t for r in runs if (t := r.value("convergence/train_seconds")) is not None]
    return {"sweep": sweep.name, "jobs": len(runs), "complete": sum(r.complete for r in runs),
            "wall_s": round(max(ends) - min(starts)) if starts and ends else None,
            "train_s_mean": round(sum(train) / len(train), 1) if train else None}


def _optional(value):
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def _integer(value) -> int | None:
    value = number(value)
    return None if value is None else int(value)


def runs_from_frame(frame: pd.DataFrame, source: Path) -> list[Run]:
    """The runs of a per-run frame; summaries hold every non-empty numeric column but IDENTITY and
    ``last/`` (the last values stay in the frame, for the scripts that read them)."""
    missing = [c for c in IDENTITY if c not in frame.columns]
    if missing:
        raise RunTableError(f"{source}: not a per-run CSV (missing column(s) {', '.join(missing)}; "
                            f"expected {', '.join(IDENTITY)}, then summary keys)")
    keys = [c for c in frame.columns if c not in IDENTITY and not c.startswith(LAST)]
    runs = []
    for row in frame.to_dict("records"):
        seed = _optional(row["seed"])
        run = Run(path=source, name=str(row["run"]), variant=str(row["variant"]),
                  model=None if _optional(row["model"]) is None else str(row["model"]),
                  seed=_integer(seed) if number(seed) is not None else seed,
                  max_steps=_integer(row["max_steps"]), steps_done=_integer(row["steps_done"]),
                  tokens_done=number(row["tokens_done"]), failed=_optional(row["failed"]),
                  overrides=json.loads(row["overrides"]) if _optional(row["overrides"]) else {})
        run.summary = {key: number(row[key]) for key in keys if number(row[key]) is not None}
        if run.failed is not None:
            run.problems.append(f"job failed: {run.failed}")
        elif not run.complete:
            run.problems.append("summary has no final val loss (unfinished)")
        runs.append(run)
    return runs


def read_runs_csv(path: Path) -> list[Run]:
    try:
        frame = pd.read_csv(path, dtype={"run": str, "variant": str, "model": str, "failed": str, "overrides": str})
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise RunTableError(f"{path}: unreadable per-run CSV ({type(exc).__name__}: {exc})") from None
    return runs_from_frame(frame, path)
