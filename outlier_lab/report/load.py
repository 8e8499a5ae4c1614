"""Finding run directories and reading each run: ``.hydra/config.yaml``, ``metrics.csv``,
``summary.json`` and the sweep's ``FAILED`` file. A run that cannot be read is still a run:
every problem is recorded on it, never raised, so one broken job never stops the report.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from outlier_lab.report.declarations import TOKENS_CURVE, declared_key, is_curve
from outlier_lab.sweep import FAILED

MAX_DEPTH = 3
FINAL_LOSS = declared_key("convergence/final_val_loss")
FP_PPL = "compress/fp/ppl"  # written by the compression evaluation next to the ratios


@dataclass
class Run:
    path: Path
    name: str                        # display name: the input directory's name / relative path
    variant: str = "unknown"
    model: str | None = None
    seed: int | str | None = None
    max_steps: int | None = None
    summary: dict = field(default_factory=dict)
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # key -> steps, values
    steps_done: int | None = None    # optimizer steps reached according to metrics.csv
    problems: list[str] = field(default_factory=list)
    failed: str | None = None        # last line of <run dir>/FAILED, when the sweep job raised
    overrides: dict[str, str] = field(default_factory=dict)  # .hydra/overrides.yaml: key -> value
    tokens_done: float | None = None  # tokens trained on in steps_done (None without train/tokens)

    @property
    def complete(self) -> bool:
        return any(number(self.summary.get(key)) is not None for key in (FINAL_LOSS, FP_PPL))

    @property
    def status(self) -> str:
        if self.complete:
            return "complete"
        return "failed" if self.failed is not None else "crashed/unfinished"

    def value(self, key: str) -> float | None:
        return number(self.summary.get(key))


def number(value) -> float | None:
    """A summary value as a float; None for null, NaN, booleans and anything non-numeric."""
    if value is None or isinstance(value, bool):
        return None
    try:
        result = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(result) else result


def oneline(exc: Exception | str, limit: int = 120) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def find_runs(root: Path, max_depth: int = MAX_DEPTH, skip: tuple[Path, ...] = ()) -> list[Path]:
    """Run directories at or below root (depth <= max_depth): folders holding
    ``.hydra/config.yaml``, ``metrics.csv`` or ``FAILED``. A run directory is not searched further."""
    found: list[Path] = []

    def visit(path: Path, depth: int) -> None:
        if any((path / name).is_file() for name in (".hydra/config.yaml", "metrics.csv", FAILED)):
            found.append(path)
            return
        if depth >= max_depth:
            return
        try:
            children = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
        except OSError:
            return
        for child in children:
            if child.resolve() not in skip:
                visit(child, depth + 1)

    if root.is_dir():
        visit(root, 0)
    return found


def _select(cfg, key: str):
    try:
        return OmegaConf.select(cfg, key, default=None, throw_on_resolution_failure=False)
    except Exception:  # noqa: BLE001 - a malformed config must not stop the report
        return None


def _read_file(run: Run, relpath: str, label: str, parse):
    """parse(path) of one of the run's files; None, with the problem recorded on the run, when
    the file is missing or parse raises."""
    path = run.path / relpath
    if not path.is_file():
        run.problems.append(f"no {relpath}")
        return None
    try:
        return parse(path)
    except Exception as exc:  # noqa: BLE001 - recorded, never raised
        run.problems.append(f"unreadable {label} ({type(exc).__name__}: {oneline(exc)})")
        return None


def _checked(value, kind: type, what: str):
    """value, if it is a kind (a file that parses to a list is as unreadable as a broken one)."""
    if not isinstance(value, kind):
        raise ValueError(f"not {what}")
    return value


def read_config(run: Run) -> None:
    cfg = _read_file(run, ".hydra/config.yaml", "config",
                     lambda path: _checked(OmegaConf.load(path), DictConfig, "a mapping"))
    if cfg is None:
        return
    variant = _select(cfg, "attention.name")
    if variant is None:
        run.problems.append("config has no attention.name")
    else:
        run.variant = str(variant)
    model = _select(cfg, "model.name")
    run.model = None if model is None else str(model)
    seed = _select(cfg, "seed")
    run.seed = seed if isinstance(seed, (int, str)) and not isinstance(seed, bool) else None
    steps = number(_select(cfg, "trainer.max_steps"))
    run.max_steps = int(steps) if steps is not None and steps >= 0 else None
    overrides = run.path / ".hydra" / "overrides.yaml"
    if overrides.is_file():
        run.overrides = parse_overrides(OmegaConf.load(overrides))


def parse_overrides(items) -> dict[str, str]:
    """{key: value} of Hydra's override strings (``+experiment=x`` -> experiment: x); entries
    that are not ``key=value`` (e.g. ``~key`` deletions) are kept with the value ``deleted``."""
    out = {}
    for item in items or []:
        key, sep, value = str(item).partition("=")
        out[key.lstrip("+~")] = value if sep else "deleted"
    return out


def read_summary(run: Run) -> None:
    summary = _read_file(run, "summary.json", "summary.json",
                         lambda path: _checked(json.loads(path.read_text()), dict, "a JSON object"))
    if summary is None:
        return
    run.summary = summary
    if not run.complete:
        run.problems.append("summary.json has no final val loss (unfinished)")


def read_metrics_csv(path: Path, wanted=is_curve) -> pd.DataFrame:
    """The wanted columns (default: the curves the report draws) of a Lightning metrics.csv as
    numbers, one row per step (sorted): a resumed run logs some steps twice, and per column the
    later non-empty value wins. Cells that are not numbers are empty (NaN), as are rows without
    a usable step."""
    try:
        frame = pd.read_csv(path, dtype=str, encoding="utf-8", encoding_errors="replace",
                            usecols=lambda key: key == "step" or wanted(key))
    except pd.errors.EmptyDataError:  # an empty file: no header, no rows
        return pd.DataFrame()
    if "step" not in frame:
        return pd.DataFrame()
    frame = frame.apply(pd.to_numeric, errors="coerce").astype(float)
    steps = np.trunc(frame.pop("step"))
    usable = np.isfinite(steps)
    return frame[usable].groupby(steps[usable].astype(int)).last()


def read_metrics(run: Run) -> None:
    frame = _read_file(run, "metrics.csv", "metrics.csv", read_metrics_csv)
    if frame is None:
        return
    for key in frame:
        column = frame[key].dropna()
        if len(column):
            run.curves[key] = (column.index.to_numpy(dtype=float), column.to_numpy(dtype=float))
    # train/loss rows carry the 0-indexed step; the validation after training is logged at
    # global_step, the number of steps done
    ends = [run.curves["train/loss"][0][-1] + 1] if "train/loss" in run.curves else []
    ends += [run.curves["val/loss"][0][-1]] if "val/loss" in run.curves else []
    done = max(ends, default=-1)
    if done >= 0:
        run.steps_done = int(done)
        run.tokens_done = tokens_done(run.curves.get(TOKENS_CURVE), run.steps_done)
    else:
        run.problems.append("metrics.csv has no train/val loss")


def tokens_done(curve: tuple[np.ndarray, np.ndarray] | None, steps_done: int) -> float | None:
    """Tokens trained on in the steps done, as ``convergence/tokens_to_X`` counts them (step
    times tokens per step; train/tokens after the 0-indexed step s is (s + 1) per step)."""
    if curve is None:
        return None
    steps, tokens = curve
    return float(tokens[-1]) / (steps[-1] + 1) * steps_done


def read_failed(run: Run) -> None:
    path = run.path / FAILED
    if path.is_file():
        lines = path.read_text(errors="replace").strip().splitlines()
        run.failed = oneline(lines[-1] if lines else "(empty)")
        run.problems.insert(0, f"job failed: {run.failed}")


def read_run(path: Path, name: str | None = None) -> Run:
    """Everything the report needs from one run directory; problems are recorded, never raised."""
    run = Run(path=path, name=name or path.name)
    for reader in (read_config, read_metrics, read_summary, read_failed):
        try:
            reader(run)
        except Exception as exc:  # noqa: BLE001 - belt and braces: one bad run never stops the report
            run.problems.append(f"{reader.__name__[5:]}: {type(exc).__name__}: {oneline(exc)}")
    return run


def load_runs(dirs: list[Path], skip: tuple[Path, ...] = ()) -> list[Run]:
    """Every run under dirs, once each (a run reached from two inputs is read once)."""
    runs, seen = [], set()
    for root in dirs:
        for path in find_runs(root, skip=skip):
            key = path.resolve()
            if key in seen:
                continue
            seen.add(key)
            rel = path.relative_to(root).as_posix()
            name = root.resolve().name if rel == "." else f"{root.resolve().name}/{rel}"
            runs.append(read_run(path, name))
    return runs
