"""Offline comparison report of finished (or crashed) runs: one table row per attention variant,
mean ± std over seeds with Welch's t-test against a baseline, and three figures.

    python -m outliers.report DIR [DIR ...] [--out OUT] [--baseline softmax]

Each DIR is a run directory or a sweep directory holding run directories (searched down to
depth 3 for folders with ``.hydra/config.yaml`` or ``metrics.csv``). Every run is read from
``.hydra/config.yaml``, ``metrics.csv`` and ``summary.json`` (names: docs/metrics.md,
docs/compression.md); a run without a final validation in its summary is "crashed/unfinished":
its curves are drawn, it stays out of the table and is listed with the reason. Writes
``OUT/report.md`` with ``loss_curves.png``, ``outliers_vs_step.png`` and ``layer_profile.png``
next to it (default OUT: ``DIR/report`` for one DIR, ``./report`` for several).

Figures follow ``outliers/plots.py``: ``matplotlib.figure.Figure`` objects built directly, no
pyplot state. Nothing here imports torch, so the report runs anywhere numpy and matplotlib do.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import sys
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

MAX_DEPTH = 3
DPI = 110
FIGURES = ("loss_curves", "outliers_vs_step", "layer_profile")

FINAL_LOSS = "convergence/final_val_loss"
FP_PPL = "compress/fp/ppl"
TOKENS_TO = re.compile(r"^convergence/tokens_to_(.+)$")
PPL_RATIO = re.compile(r"^compress/(.+)/ppl_ratio$")
LAYER_KEY = re.compile(r"^outliers/act/(top1|median)/layer_(\d+)$")
FAILED = "FAILED"  # a sweep job's traceback (outliers/sweep.py: record_failure), not imported: no hydra here

# Table columns in order: (summary key, header). Lower is better in every one of them. The
# tokens-to-target column is inserted after the ppl (its key depends on the targets reached),
# and ppl ratios of other compression protocols found in the summaries are appended.
COLUMNS = [
    (FINAL_LOSS, "final val loss"),
    ("convergence/final_val_ppl", "final ppl"),
    ("convergence/val_loss_auc", "val-loss AUC"),
    ("outliers/act/top1_over_median/max", "top1/median (max)"),
    ("outliers/down/top1_over_median/max", "down-proj input top1/median"),
    ("outliers/act/avg_kurtosis", "avg kurtosis"),
    ("outliers/act/max_inf_norm", "max inf-norm"),
    ("outliers/attn/sink_rate", "sink rate"),
    ("outliers/attn/first_token_share/max", "first-token share"),
    ("compress/w8a8/ppl_ratio", "W8A8 ppl ratio"),
    ("compress/w8_absmax/ppl_ratio", "W8 ppl ratio"),
    ("compress/prune50/ppl_ratio", "prune50 ppl ratio"),
]
HEADLINE = [  # outliers_vs_step.png panels: (metrics.csv key, title)
    ("outliers/act/top1_over_median/max", "top1 / median |h| (max over layers)"),
    ("outliers/act/avg_kurtosis", "average kurtosis"),
    ("outliers/act/max_inf_norm", "max inf-norm of the residual"),
    ("outliers/attn/sink_rate", "sink rate"),
    ("outliers/attn/first_token_share/max", "first-token attention share (max)"),
    ("outliers/down/top1_over_median/max", "top1 / median at the FFN down-projection input"),
]
CURVE_KEYS = {"train/loss", "val/loss"} | {key for key, _ in HEADLINE}
SIGNIFICANCE = ((0.01, "**"), (0.05, "*"))  # (threshold, mark), strictest first


# ----------------------------------------------------------------------------- statistics

def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz evaluation)."""
    tiny, eps = 1e-300, 1e-15
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 1000):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),         # even term
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):  # odd
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= c * d
        if abs(c * d - 1.0) < eps:
            break
    return result


def betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta function I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                 + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):  # the fraction converges fast here; else use symmetry
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_two_sided_p(t: float, df: float) -> float:
    """Two-sided p-value P(|T| >= |t|) of Student's t distribution with df degrees of freedom
    (df may be fractional, as Welch's is): I_{df/(df+t^2)}(df/2, 1/2)."""
    if math.isnan(t) or math.isnan(df) or df <= 0:
        return math.nan
    if math.isinf(t):
        return 0.0
    if math.isinf(df) or df > 1e7:  # the normal limit
        return math.erfc(abs(t) / math.sqrt(2.0))
    return min(1.0, max(0.0, betainc(df / 2.0, 0.5, df / (df + t * t))))


def welch_t_test(a, b) -> tuple[float, float, float]:
    """Welch's unequal-variance t-test of mean(a) vs mean(b): (t, df, two-sided p). Needs two
    values on each side. Without any spread, equal means give p = 1 and different means p = 0."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.size < 2 or b.size < 2:
        raise ValueError("Welch's t-test needs at least two values on each side")
    se_a, se_b = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    diff = float(a.mean() - b.mean())
    se2 = float(se_a + se_b)
    if not math.isfinite(diff) or not math.isfinite(se2):
        return math.nan, math.nan, math.nan
    if se2 == 0.0:
        return (0.0, math.inf, 1.0) if diff == 0.0 else (math.copysign(math.inf, diff), math.inf, 0.0)
    t = diff / math.sqrt(se2)
    df = se2 ** 2 / (se_a ** 2 / (a.size - 1) + se_b ** 2 / (b.size - 1))
    return t, float(df), t_two_sided_p(t, df)


def significance_mark(p: float | None) -> str:
    if p is None or math.isnan(p):
        return ""
    return next((mark for threshold, mark in SIGNIFICANCE if p < threshold), "")


# ----------------------------------------------------------------------------- reading runs

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

    @property
    def complete(self) -> bool:
        return any(_number(self.summary.get(key)) is not None for key in (FINAL_LOSS, FP_PPL))

    @property
    def status(self) -> str:
        if self.complete:
            return "complete"
        return "failed" if self.failed is not None else "crashed/unfinished"

    def value(self, key: str) -> float | None:
        return _number(self.summary.get(key))


def _number(value) -> float | None:
    """A summary/CSV value as a float; None for null, NaN, booleans and anything non-numeric."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


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
    from omegaconf import OmegaConf

    try:
        return OmegaConf.select(cfg, key, default=None, throw_on_resolution_failure=False)
    except Exception:  # noqa: BLE001 - a malformed config must not stop the report
        return None


def _read_config(run: Run) -> None:
    path = run.path / ".hydra" / "config.yaml"
    if not path.is_file():
        run.problems.append("no .hydra/config.yaml")
        return
    try:
        from omegaconf import DictConfig, OmegaConf

        cfg = OmegaConf.load(path)
        if not isinstance(cfg, DictConfig):
            raise ValueError("not a mapping")
    except Exception as exc:  # noqa: BLE001
        run.problems.append(f"unreadable config ({type(exc).__name__}: {_oneline(exc)})")
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
    steps = _number(_select(cfg, "trainer.max_steps"))
    run.max_steps = int(steps) if steps is not None and steps >= 0 else None


def _read_summary(run: Run) -> None:
    path = run.path / "summary.json"
    if not path.is_file():
        run.problems.append("no summary.json")
        return
    try:
        summary = json.loads(path.read_text())
        if not isinstance(summary, dict):
            raise ValueError("not a JSON object")
    except Exception as exc:  # noqa: BLE001
        run.problems.append(f"unreadable summary.json ({type(exc).__name__}: {_oneline(exc)})")
        return
    run.summary = summary
    if not run.complete:
        run.problems.append("summary.json has no final val loss (unfinished)")


def _wanted(key: str) -> bool:
    return key in CURVE_KEYS or LAYER_KEY.match(key) is not None


def _read_metrics(run: Run) -> None:
    path = run.path / "metrics.csv"
    if not path.is_file():
        run.problems.append("no metrics.csv")
        return
    points: dict[str, dict[int, float]] = {}
    done = -1
    try:
        with open(path, newline="", encoding="utf-8", errors="replace") as f:
            reader = csv.DictReader(f)
            keys = [k for k in (reader.fieldnames or []) if k and _wanted(k)]
            for row in reader:
                step = _number(row.get("step"))
                if step is None:
                    continue
                step = int(step)
                for key in keys:
                    value = _number(row.get(key))
                    if value is not None:  # a later row for the same step wins (resumed runs)
                        points.setdefault(key, {})[step] = value
                # train/loss rows carry the 0-indexed step; the validation after training is
                # logged at global_step, the number of steps done
                if _number(row.get("train/loss")) is not None:
                    done = max(done, step + 1)
                if _number(row.get("val/loss")) is not None:
                    done = max(done, step)
    except Exception as exc:  # noqa: BLE001
        run.problems.append(f"unreadable metrics.csv ({type(exc).__name__}: {_oneline(exc)})")
    for key, by_step in points.items():
        steps = np.array(sorted(by_step), dtype=float)
        run.curves[key] = (steps, np.array([by_step[int(s)] for s in steps], dtype=float))
    if done >= 0:
        run.steps_done = done
    elif not any("metrics.csv" in problem for problem in run.problems):
        run.problems.append("metrics.csv has no train/val loss")


def _read_failed(run: Run) -> None:
    path = run.path / FAILED
    if path.is_file():
        lines = path.read_text(errors="replace").strip().splitlines()
        run.failed = _oneline(lines[-1] if lines else "(empty)")
        run.problems.insert(0, f"job failed: {run.failed}")


def _oneline(exc: Exception | str, limit: int = 120) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def read_run(path: Path, name: str | None = None) -> Run:
    """Everything the report needs from one run directory; problems are recorded, never raised."""
    run = Run(path=path, name=name or path.name)
    for reader in (_read_config, _read_metrics, _read_summary, _read_failed):
        try:
            reader(run)
        except Exception as exc:  # noqa: BLE001 - belt and braces: one bad run never stops the report
            run.problems.append(f"{reader.__name__[6:]}: {type(exc).__name__}: {_oneline(exc)}")
    return run


def load_runs(dirs: list[Path], skip: tuple[Path, ...] = ()) -> list[Run]:
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


# ----------------------------------------------------------------------------- grouping, table

@dataclass
class Group:
    label: str
    variant: str
    model: str | None
    runs: list[Run]

    @property
    def complete(self) -> list[Run]:
        return [r for r in self.runs if r.complete]

    @property
    def broken(self) -> list[Run]:
        return [r for r in self.runs if not r.complete]

    def values(self, key: str) -> list[float]:
        return [v for v in (r.value(key) for r in self.complete) if v is not None]


def group_runs(runs: list[Run], baseline: str) -> list[Group]:
    """One group per variant; per (variant, model) when the runs mix models. Baseline first."""
    models = {r.model for r in runs if r.model is not None}
    by_model = len(models) > 1
    groups: dict[tuple, Group] = {}
    for run in runs:
        key = (run.variant, run.model if by_model else None)
        if key not in groups:
            label = f"{run.variant} ({run.model})" if by_model and run.model else run.variant
            groups[key] = Group(label, run.variant, key[1], [])
        groups[key].runs.append(run)
    return sorted(groups.values(), key=lambda g: (str(g.model), g.variant != baseline, g.variant))


@dataclass
class Column:
    key: str
    header: str
    kind: str = "num"  # "tokens" formats with k/M/G


@dataclass
class Cell:
    values: list[float]
    expected: int             # complete runs of the variant
    p: float | None = None    # Welch's test against the baseline
    best: bool = False

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return float(np.mean(self.values)) if self.values else math.nan

    @property
    def std(self) -> float:
        if self.n < 2 or not all(math.isfinite(v) for v in self.values):
            return math.nan
        return float(np.std(self.values, ddof=1))


@dataclass
class Table:
    columns: list[Column]
    groups: list[Group]
    cells: dict[tuple[str, str], Cell]  # (group label, column key) -> cell
    baseline: Group | None
    tokens_target: str | None           # e.g. "2" when the tokens_to_2 column is shown


def choose_tokens_target(groups: list[Group]) -> str | None:
    """The lowest loss target X such that every variant with a complete run has at least one
    run that reached it (summary key ``convergence/tokens_to_X`` not null)."""
    candidates = {}
    for group in groups:
        for run in group.complete:
            for key in run.summary:
                match = TOKENS_TO.match(key)
                if match and _number(match.group(1)) is not None:
                    candidates[key] = _number(match.group(1))
    contenders = [g for g in groups if g.complete]
    for key in sorted(candidates, key=candidates.get):
        if contenders and all(g.values(key) for g in contenders):
            return TOKENS_TO.match(key).group(1)
    return None


def _baseline_for(group: Group, groups: list[Group], baseline: str) -> Group | None:
    return next((g for g in groups if g.variant == baseline and g.model == group.model), None)


def build_table(groups: list[Group], baseline: str) -> Table:
    columns = [Column(key, header) for key, header in COLUMNS]
    target = choose_tokens_target(groups)
    if target is not None:
        columns.insert(2, Column(f"convergence/tokens_to_{target}", f"tokens to val loss ≤ {target}", "tokens"))
    known = {c.key for c in columns}
    extra = sorted({key for g in groups for r in g.complete for key in r.summary
                    if PPL_RATIO.match(key) and key not in known})
    columns += [Column(key, f"{PPL_RATIO.match(key).group(1)} ppl ratio") for key in extra]
    columns = [c for c in columns if any(g.values(c.key) for g in groups)]  # drop absent keys

    cells = {}
    for group in groups:
        for column in columns:
            cells[group.label, column.key] = Cell(group.values(column.key), len(group.complete))
    for column in columns:
        for group in groups:
            base = _baseline_for(group, groups, baseline)
            cell = cells[group.label, column.key]
            if base is None or base is group:
                continue
            other = cells[base.label, column.key]
            if cell.n >= 2 and other.n >= 2:
                cell.p = welch_t_test(cell.values, other.values)[2]
        filled = [cells[g.label, column.key] for g in groups if cells[g.label, column.key].n]
        best = min((c.mean for c in filled), default=math.nan)
        if any(c.mean > best for c in filled):  # nothing to single out when all tie
            for c in filled:
                c.best = c.mean == best
    base = next((g for g in groups if g.variant == baseline), None)
    return Table(columns, groups, cells, base, target)


# ----------------------------------------------------------------------------- formatting

def format_number(x: float, kind: str = "num", digits: int = 4) -> str:
    if x is None or math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if kind == "tokens":
        digits = min(digits, 3)
        for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
            if abs(x) >= scale:
                return f"{x / scale:.{digits}g}{suffix}"
        return f"{x:.{digits}g}"
    if x == 0:
        return "0"
    if 1e-3 <= abs(x) < 1e5:
        text = f"{x:.{digits}g}"
        return f"{x:.0f}" if "e" in text else text  # 141.4 to 2 digits: "141", not "1.4e+02"
    mantissa, exponent = f"{x:.{digits - 1}e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def format_cell(cell: Cell, kind: str = "num") -> str:
    """"mean ± std" (n >= 2), "mean (n=1)"; "(k/n)" when only k of the n complete runs have it."""
    if not cell.n:
        return "—"
    text = format_number(cell.mean, kind)
    if cell.n >= 2 and not math.isnan(cell.std):
        std = 0.0 if cell.std <= 1e-9 * abs(cell.mean) else cell.std  # rounding noise of equal values
        text += f" ± {format_number(std, kind, digits=2)}"
    if cell.n < cell.expected:
        text += f" ({cell.n}/{cell.expected})"
    elif cell.n == 1:
        text += " (n=1)"
    return text


def _seeds(group: Group) -> str:
    text = str(len(group.complete))
    if group.broken:
        text += f" (+{len(group.broken)} broken)"
    return text


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("*", "\\*")


def markdown_table(table: Table) -> str:
    headers = ["variant", "seeds"] + [c.header for c in table.columns]
    lines = ["| " + " | ".join(_md_escape(h) for h in headers) + " |",
             "|" + "|".join([":---", "---:"] + ["---:"] * len(table.columns)) + "|"]
    for group in table.groups:
        label = _md_escape(group.label) + (" (baseline)" if group is _base_of(table, group) else "")
        row = [label, _seeds(group)]
        for column in table.columns:
            cell = table.cells[group.label, column.key]
            text = format_cell(cell, column.kind)
            if cell.best:
                text = f"**{text}**"
            mark = significance_mark(cell.p)
            if mark:
                text += " " + "\\*" * len(mark)
            row.append(text)
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _base_of(table: Table, group: Group) -> Group | None:
    if table.baseline is None:
        return None
    return _baseline_for(group, table.groups, table.baseline.variant)


SECTIONS = (("convergence/", "convergence"), ("outliers/", "outliers"), ("compress/", "compression"))


def rich_tables(table: Table) -> list:
    """The table for the terminal, split by section (convergence, outliers, compression) so
    that each part fits a terminal's width without folding its cells."""
    from rich.table import Table as RichTable
    from rich.text import Text

    parts = []
    for prefix, section in SECTIONS:
        columns = [c for c in table.columns if c.key.startswith(prefix)]
        if not columns:
            continue
        out = RichTable(title=f"{section}: mean ± std over seeds (lower is better)", title_justify="left")
        out.add_column("variant", no_wrap=True)
        out.add_column("seeds", justify="right", no_wrap=True)
        for column in columns:
            out.add_column(column.header, justify="right", no_wrap=True)
        for group in table.groups:
            label = group.label + (" (baseline)" if group is _base_of(table, group) else "")
            row = [Text(label), Text(_seeds(group))]
            for column in columns:
                cell = table.cells[group.label, column.key]
                text = Text(format_cell(cell, column.kind), style="bold" if cell.best else "")
                mark = significance_mark(cell.p)
                if mark:
                    text.append(" " + mark, style="yellow")
                row.append(text)
            out.add_row(*row)
        parts.append(out)
    return parts


# ----------------------------------------------------------------------------- figures

def _new_figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


def _colors(groups: list[Group]) -> dict[str, tuple]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if len(groups) <= 10 else "tab20"]
    return {g.label: cmap(i % cmap.N) for i, g in enumerate(groups)}


MARKERS = "osD^vP*Xph<>"


def _markers(groups: list[Group]) -> dict[str, str]:
    """A marker per variant too, so that overlapping lines stay distinguishable."""
    return {g.label: MARKERS[i % len(MARKERS)] for i, g in enumerate(groups)}


def _curve_runs(group: Group) -> list[Run]:
    """The runs averaged in the figures: the complete ones, or all when none completed."""
    return group.complete or group.runs


def aggregate(curves: list[tuple[np.ndarray, np.ndarray]]):
    """Mean, min and max over runs on the union of their steps; each run is linearly
    interpolated inside its own step range only (a shorter run leaves the mean early)."""
    curves = [(s, v) for s, v in curves if len(s)]
    if not curves:
        return None
    grid = np.unique(np.concatenate([s for s, _ in curves]))
    stack = np.full((len(curves), len(grid)), np.nan)
    for i, (steps, values) in enumerate(curves):
        inside = (grid >= steps[0]) & (grid <= steps[-1])
        stack[i, inside] = np.interp(grid[inside], steps, values)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return grid, np.nanmean(stack, axis=0), np.nanmin(stack, axis=0), np.nanmax(stack, axis=0)


def _no_data(ax, text: str = "no data") -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="gray")
    ax.set_xticks([]), ax.set_yticks([])


def _smooth(steps: np.ndarray, values: np.ndarray, points: int = 60):
    """Moving average down to about `points` points (the faint train loss is noisy)."""
    window = len(values) // points
    if window < 2:
        return steps, values
    kernel = np.ones(window) / window
    return np.convolve(steps, kernel, mode="valid"), np.convolve(values, kernel, mode="valid")


def _marker_style(marker: str, n_points: int, size: float = 4) -> dict:
    """Markers on about 12 points of a line: enough to tell overlapping lines apart."""
    return dict(marker=marker, markersize=size, markevery=max(1, n_points // 12))


def _outside_legend(fig: Figure, handles: list, labels: list) -> None:
    fig.legend(handles, labels, loc="outside right upper", fontsize="small", frameon=False,
               ncols=1 if len(labels) <= 16 else 2)


def loss_curves_figure(groups: list[Group], colors: dict, markers: dict) -> Figure:
    """Validation loss vs step: mean over seeds with a min–max band; train loss faint (moving
    average); crashed runs of a variant with complete ones as dotted lines."""
    fig = _new_figure(9.5, 5.0)
    ax = fig.add_subplot()
    val_values, drawn_train, drawn_crashed = [], False, False
    for group in groups:
        color, runs = colors[group.label], _curve_runs(group)
        train = aggregate([r.curves["train/loss"] for r in runs if "train/loss" in r.curves])
        if train is not None:
            ax.plot(*_smooth(train[0], train[1]), color=color, alpha=0.3, linewidth=0.8)
            drawn_train = True
        val = aggregate([r.curves["val/loss"] for r in runs if "val/loss" in r.curves])
        if val is not None:
            steps, mean, lo, hi = val
            ax.fill_between(steps, lo, hi, color=color, alpha=0.18, linewidth=0)
            ax.plot(steps, mean, color=color, linewidth=1.8, label=f"{group.label} (n={len(runs)})",
                    **_marker_style(markers[group.label], len(steps)))
            val_values += [lo, hi]
        if group.complete:
            for run in group.broken:
                if "val/loss" in run.curves:
                    ax.plot(*run.curves["val/loss"], color=color, linestyle=":", linewidth=1.4)
                    val_values.append(run.curves["val/loss"][1])
                    drawn_crashed = True
    if not val_values:
        _no_data(ax, "no val/loss logged")
        return fig
    finite = np.concatenate(val_values)
    finite = finite[np.isfinite(finite)]
    if finite.size:  # frame the validation curves; the (higher, noisier) train loss may leave the top
        span = max(finite.max() - finite.min(), 1e-3)
        ax.set_ylim(finite.min() - 0.05 * span, finite.max() + 0.08 * span)
    handles, labels = ax.get_legend_handles_labels()
    if drawn_train:
        handles.append(Line2D([], [], color="gray", alpha=0.4, linewidth=0.8))
        labels.append("train loss (faint)")
    if drawn_crashed:
        handles.append(Line2D([], [], color="gray", linestyle=":"))
        labels.append("crashed run (val)")
    _outside_legend(fig, handles, labels)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title("Validation loss: mean over seeds, band = min–max")
    ax.grid(True, alpha=0.3)
    return fig


def outliers_figure(groups: list[Group], colors: dict, markers: dict) -> Figure:
    """One panel per headline outlier metric, a line per variant (mean over seeds); the last
    panel holds the legend."""
    cols = (len(HEADLINE) + 2) // 2  # two rows, one more panel for the legend
    fig = _new_figure(4.3 * cols, 7.0)
    fig.suptitle("Outlier metrics over training (mean over seeds)")
    handles = {}
    for i, (key, title) in enumerate(HEADLINE):
        ax = fig.add_subplot(2, cols, i + 1)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(True, alpha=0.3)
        drawn = []
        for group in groups:
            agg = aggregate([r.curves[key] for r in _curve_runs(group) if key in r.curves])
            if agg is None:
                continue
            steps, mean = agg[0], agg[1]
            (line,) = ax.plot(steps, mean, color=colors[group.label], linewidth=1.5, alpha=0.85,
                              **_marker_style(markers[group.label], len(steps)))
            handles.setdefault(group.label, line)
            drawn.append(mean)
        if not drawn:
            _no_data(ax)
            continue
        values = np.concatenate(drawn)
        values = values[np.isfinite(values)]
        if values.size and values.min() > 0 and values.max() / values.min() > 20:
            ax.set_yscale("log")
            ax.set_ylabel("log scale", fontsize=8)
    legend_ax = fig.add_subplot(2, cols, len(HEADLINE) + 1)
    legend_ax.axis("off")
    if handles:
        legend_ax.legend(list(handles.values()), list(handles), loc="center", title="variant",
                         fontsize="small", ncols=1 if len(handles) <= 10 else 2, frameon=False)
    return fig


def _last_layer_values(run: Run, stat: str) -> dict[int, float]:
    """Per-layer value of `stat` (top1/median) at the last step it was logged."""
    out = {}
    for key, (steps, values) in run.curves.items():
        match = LAYER_KEY.match(key)
        if match and match.group(1) == stat and len(values):
            out[int(match.group(2))] = float(values[-1])
    return out


def layer_profile_figure(groups: list[Group], colors: dict, markers: dict) -> Figure:
    """Per layer, at the last measurement: top-1 (solid) and median (dashed) |h| of the residual
    stream, and their ratio; a line per variant (mean over seeds), log y."""
    fig = _new_figure(13.0, 4.8)
    ax_abs, ax_ratio = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    fig.suptitle("Residual stream per layer at the last measurement (mean over seeds)")
    handles, any_data = [], False
    for group in groups:
        runs = _curve_runs(group)
        profiles = {stat: [_last_layer_values(r, stat) for r in runs] for stat in ("top1", "median")}
        layers = sorted({l for p in profiles["top1"] + profiles["median"] for l in p})
        if not layers:
            continue
        any_data = True
        color = colors[group.label]
        mean = {}
        for stat, per_run in profiles.items():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                mean[stat] = np.array([np.nanmean([p.get(l, np.nan) for p in per_run]) for l in layers])
        marker = markers[group.label]
        ax_abs.plot(layers, mean["top1"], color=color, marker=marker, markersize=5, linewidth=1.6)
        ax_abs.plot(layers, mean["median"], color=color, marker=marker, markersize=3.5, linewidth=1.1,
                    linestyle="--", alpha=0.8)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = mean["top1"] / mean["median"]
        ax_ratio.plot(layers, ratio, color=color, marker=marker, markersize=5, linewidth=1.6)
        handles.append(Line2D([], [], color=color, marker=marker, linewidth=1.6, label=group.label))
    for ax, ylabel, title in ((ax_abs, "|h| (log)", "top-1 (solid) and median (dashed) |h|"),
                              (ax_ratio, "top-1 / median (log)", "top-1 / median |h|")):
        ax.set_title(title, fontsize=10)
        if not any_data:
            _no_data(ax, "no per-layer outliers/act/{top1,median} logged")
            continue
        ax.set_yscale("log", nonpositive="mask")
        ax.set_xlabel("layer")
        ax.set_ylabel(ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, which="major", alpha=0.3)
    if handles:
        style = [Line2D([], [], color="black", label="top-1 (solid)"),
                 Line2D([], [], color="black", linestyle="--", linewidth=1.1, label="median (dashed)")]
        handles += style
        _outside_legend(fig, handles, [h.get_label() for h in handles])
    return fig


def make_figures(groups: list[Group]) -> dict[str, Figure]:
    colors, markers = _colors(groups), _markers(groups)
    return {"loss_curves": loss_curves_figure(groups, colors, markers),
            "outliers_vs_step": outliers_figure(groups, colors, markers),
            "layer_profile": layer_profile_figure(groups, colors, markers)}


# ----------------------------------------------------------------------------- report

def _steps_text(run: Run) -> str:
    done = "—" if run.steps_done is None else str(run.steps_done)
    return done if run.max_steps is None else f"{done}/{run.max_steps}"


def markdown_report(runs: list[Run], table: Table, dirs: list[Path], baseline: str) -> str:
    complete = sum(r.complete for r in runs)
    broken = [r for r in runs if r.problems]
    base = table.baseline
    lines = [
        "# Attention-variant comparison",
        "",
        f"Generated {datetime.now():%Y-%m-%d %H:%M} from {', '.join(f'`{d}`' for d in dirs)}: "
        f"{len(runs)} runs ({complete} complete, {len(runs) - complete} failed or unfinished), "
        f"{len(table.groups)} variants.",
        "",
        "## Results",
        "",
        "Mean ± std over the complete runs of each variant (std with ddof=1; a single run shows its "
        "value and \"(n=1)\"; \"(k/n)\": only k of the n complete runs have that value). "
        "Lower is better in every column; **bold** marks the best mean of each column. "
        "Crashed/unfinished runs are left out of the table (see the seeds column and the list below).",
        "",
    ]
    if table.columns:
        lines += [markdown_table(table), ""]
    else:
        lines += ["No complete run has any summary value: no table.", ""]
    if base is not None:
        lines.append(f"Significance: Welch's t-test of each variant against the baseline `{baseline}`, "
                     "two-sided, only where both have at least 2 seeds: \\* p < 0.05, \\*\\* p < 0.01.")
    else:
        lines.append(f"Significance: no baseline: no run of `{baseline}` was found (`--baseline`).")
    if table.tokens_target is not None:
        lines += ["", f"Tokens to val loss ≤ {table.tokens_target}: the lowest loss target that every "
                  "variant reached in at least one run (`convergence/tokens_to_X`)."]
    if table.columns:
        lines += ["", "Columns: " + "; ".join(f"{c.header} = `{c.key}`" for c in table.columns) + "."]
    lines.append("")
    lines += [
        "## Figures",
        "",
        "### Loss curves",
        "",
        "![Validation loss vs step](loss_curves.png)",
        "",
        "### Outlier metrics over training",
        "",
        "![Outlier metrics vs step](outliers_vs_step.png)",
        "",
        "### Per-layer profile",
        "",
        "![Per-layer top-1 and median |h|](layer_profile.png)",
        "",
        "## Runs",
        "",
        "| run | variant | model | seed | steps | status |",
        "|:---|:---|:---|---:|---:|:---|",
    ]
    for run in runs:
        lines.append(f"| `{run.name}` | {_md_escape(run.variant)} | {_md_escape(str(run.model or '—'))} | "
                     f"{'—' if run.seed is None else run.seed} | {_steps_text(run)} | {run.status} |")
    lines += ["", "## Broken runs", ""]
    if broken:
        for run in broken:
            lines.append(f"- `{run.name}` ({run.status}): {'; '.join(run.problems)}  \n  `{run.path}`")
    else:
        lines.append("None.")
    duplicates = _duplicate_seeds(runs)
    if duplicates:
        lines += ["", "Note: several complete runs share a seed (" + ", ".join(duplicates)
                  + "); they all count as separate samples."]
    return "\n".join(lines) + "\n"


def _duplicate_seeds(runs: list[Run]) -> list[str]:
    counts: dict[tuple, int] = {}
    for run in runs:
        if run.complete and run.seed is not None:
            key = (run.variant, run.model, run.seed)
            counts[key] = counts.get(key, 0) + 1
    return [f"{v} seed {s} ×{n}" for (v, _, s), n in counts.items() if n > 1]


def write_report(dirs: list[Path], out: Path, baseline: str = "softmax") -> tuple[Path, Table, list[Run]]:
    """Read every run under dirs, write OUT/report.md and the PNGs; returns (path, table, runs)."""
    runs = load_runs(dirs, skip=(out.resolve(),))
    groups = group_runs(runs, baseline)
    table = build_table(groups, baseline)
    out.mkdir(parents=True, exist_ok=True)
    for name, fig in make_figures(groups).items():
        fig.savefig(out / f"{name}.png", dpi=DPI)
    path = out / "report.md"
    path.write_text(markdown_report(runs, table, dirs, baseline), encoding="utf-8")
    return path, table, runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m outliers.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("dirs", nargs="+", type=Path, metavar="DIR", help="run or sweep directories")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: DIR/report for one DIR, ./report for several)")
    parser.add_argument("--baseline", default="softmax", help="variant the t-tests compare against")
    args = parser.parse_args(argv)

    from rich.console import Console

    console = Console()
    if not console.is_terminal:  # a pipe or a log file: don't squeeze the tables into 80 columns
        console = Console(width=max(console.width, 160))
    missing = [d for d in args.dirs if not d.is_dir()]
    for d in missing:
        console.print(f"[red]not a directory:[/] {d}")
    dirs = [d for d in args.dirs if d.is_dir()]
    out = args.out or (dirs[0] / "report" if len(args.dirs) == 1 and dirs else Path("report"))
    if not dirs or not any(find_runs(d, skip=(out.resolve(),)) for d in dirs):
        console.print("[red]no run directories found[/] (folders with .hydra/config.yaml or metrics.csv, "
                      f"depth <= {MAX_DEPTH})")
        return 1
    path, table, runs = write_report(dirs, out, args.baseline)
    for part in rich_tables(table):
        console.print(part)
    console.print("bold: best mean per column; * p < 0.05, ** p < 0.01: Welch's t-test against the "
                  f"baseline {args.baseline!r} (both with >= 2 seeds)", highlight=False)
    broken = [r for r in runs if r.problems]
    if broken:
        console.print(f"[yellow]{len(broken)} broken run(s):[/]")
        for run in broken:
            console.print(f"  {run.name}: {'; '.join(run.problems)}", markup=False, highlight=False)
    console.print(f"Report: {path}", highlight=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
