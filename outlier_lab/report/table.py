"""The comparison table: runs grouped by variant, one column per declared metric with a
header (plus tokens-to-target and the compression ratios found in the runs), and per cell
the values over seeds, the best of each column and the test against the baseline
(``compare``: the column's test, Holm-corrected over the table).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from outlier_lab.report.compare import Comparison, compare, correct
from outlier_lab.report.declarations import TOKENS_TO, column_metrics, ratio_columns
from outlier_lab.report.load import Run, number

TOKENS_COLUMN_INDEX = 2  # after the final loss and ppl


# override keys that never define a group: the variant is grouped anyway, seeds are averaged
NOT_SWEPT = {"attention", "seed", "ckpt_path", "paths.output_dir"}


@dataclass
class Group:
    label: str
    variant: str
    model: str | None
    runs: list[Run]
    setting: tuple[tuple[str, str | None], ...] = ()  # the other swept keys' values, e.g. (("optim", "sgd"),)

    @property
    def complete(self) -> list[Run]:
        return [r for r in self.runs if r.complete]

    @property
    def broken(self) -> list[Run]:
        return [r for r in self.runs if not r.complete]

    def values(self, key: str) -> list[float]:
        return [v for v in (r.value(key) for r in self.complete) if v is not None]


def swept_keys(runs: list[Run]) -> list[str]:
    """The override keys (besides the variant and the seed) whose value differs between runs;
    a run without the override has the value None (the config's default)."""
    keys = sorted({key for run in runs for key in run.overrides} - NOT_SWEPT)
    return [key for key in keys if not key.startswith("hydra.") and len({r.overrides.get(key) for r in runs}) > 1]


def parse_baseline(baseline: str) -> tuple[str, str]:
    """``softmax`` -> (attention, softmax); ``optim=adamw`` -> (optim, adamw): the swept key
    and the value every other group is compared with."""
    key, _, value = baseline.rpartition("=")
    return key or "attention", value


def is_baseline(group: Group, baseline: str) -> bool:
    key, value = parse_baseline(baseline)
    return str(group.variant if key == "attention" else dict(group.setting).get(key)) == value


def group_runs(runs: list[Run], baseline: str) -> list[Group]:
    """One group per variant and combination of the other swept keys (e.g. the optimizer of a
    crossed sweep), per model too when the runs mix models. Within a setting, baseline first."""
    models = {r.model for r in runs if r.model is not None}
    by_model = len(models) > 1
    keys = swept_keys(runs)
    groups: dict[tuple, Group] = {}
    for run in runs:
        setting = tuple((key, run.overrides.get(key)) for key in keys)
        key = (run.variant, run.model if by_model else None, setting)
        if key not in groups:
            shown = [f"{k}={v}" for k, v in setting if v is not None] + ([str(run.model)] if by_model and run.model else [])
            label = f"{run.variant} ({', '.join(shown)})" if shown else run.variant
            groups[key] = Group(label, run.variant, key[1], [], setting)
        groups[key].runs.append(run)
    return sorted(groups.values(),
                  key=lambda g: (str(g.model), [(v is not None, str(v)) for _, v in g.setting],
                                 not is_baseline(g, baseline), g.variant))


@dataclass
class Column:
    key: str
    header: str
    kind: str = "num"  # "tokens" formats with k/M/G (and its runs that did not get there are censored)
    binary_above: float | None = None  # a yes/no outcome per run: yes when the value is above this

    @property
    def test(self) -> str:
        """The test against the baseline (``compare``): fisher, logrank or welch."""
        return "fisher" if self.binary_above is not None else "logrank" if self.kind == "tokens" else "welch"


@dataclass
class Cell:
    values: list[float]
    expected: int             # complete runs of the variant
    comparison: Comparison | None = None  # the test against the baseline (None: the baseline, or none)
    best: bool = False
    binary_above: float | None = None     # the column's yes/no rule
    censored: list[float | None] = field(default_factory=list)  # tokens columns: where the others stopped

    @property
    def p(self) -> float | None:
        """The uncorrected p of the test against the baseline (NaN: no test; None: not compared)."""
        return None if self.comparison is None else self.comparison.p

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return float(np.mean(self.values)) if self.values else math.nan

    @property
    def yes(self) -> int:
        """Runs whose value is above the yes/no threshold."""
        return sum(v > self.binary_above for v in self.values)

    @property
    def fraction(self) -> float:
        return self.yes / self.n if self.n else math.nan

    @property
    def rank(self) -> tuple[float, ...]:
        """What "best" compares (lowest first): the fraction of yes for a yes/no column; for tokens
        to a target the fraction of runs that did not get there, then the mean of those that did
        (2 quick runs of 6 are not better than 6 of 6); else the mean."""
        if self.binary_above is not None:
            return (self.fraction,)
        return (len(self.censored) / (self.n + len(self.censored)), self.mean)

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
    baseline_name: str = "softmax"      # --baseline: a variant, or KEY=VALUE of another swept key

    def baseline_of(self, group: Group) -> Group | None:
        """The baseline group this group is tested against (same model), if any."""
        if self.baseline is None:
            return None
        return baseline_for(group, self.groups, self.baseline_name)


def choose_tokens_target(groups: list[Group]) -> str | None:
    """The lowest loss target X such that every variant with a complete run has at least one
    run that reached it (summary key ``convergence/tokens_to_X`` not null)."""
    candidates = {}
    for group in groups:
        for run in group.complete:
            for key in run.summary:
                match = TOKENS_TO.match(key)
                if match and number(match.group(1)) is not None:
                    candidates[key] = number(match.group(1))
    contenders = [g for g in groups if g.complete]
    for key in sorted(candidates, key=candidates.get):
        if contenders and all(g.values(key) for g in contenders):
            return TOKENS_TO.match(key).group(1)
    return None


def baseline_for(group: Group, groups: list[Group], baseline: str) -> Group | None:
    """The baseline's group with the same model and the same values of the other swept keys
    (and the same variant when the baseline is another key's value, ``optim=adamw``). When
    nothing matches exactly, the baseline key's own settings that the baseline's runs leave
    at their default match any value: sgd runs that set optim.lr are compared with adamw runs
    that do not. Any other difference (model.n_head=2) means no baseline, not a mismatched one."""
    key = parse_baseline(baseline)[0]
    candidates = [g for g in groups if is_baseline(g, baseline) and g.model == group.model
                  and (key == "attention" or g.variant == group.variant)]

    def others(g: Group) -> dict:
        return {k: v for k, v in g.setting if k != key}

    exact = next((g for g in candidates if others(g) == others(group)), None)
    def covers(g: Group) -> bool:
        return all(v == others(group).get(k) or (v is None and k.startswith(f"{key}."))
                   for k, v in others(g).items())

    return exact or next((g for g in candidates if covers(g)), None)


def table_columns(groups: list[Group]) -> tuple[list[Column], str | None]:
    """The columns that have a value in some complete run, and the tokens target. Lower is
    better in every one of them. Order: the declared columns (section, then declaration
    order) with tokens-to-target at TOKENS_COLUMN_INDEX, then the ppl ratios of compression
    protocols without a header that the summaries hold."""
    found = {key for g in groups for r in g.complete for key in r.summary}
    columns = [Column(m.key, m.column if m.binary_above is None else f"{m.column} > {m.binary_above:g}",
                      binary_above=m.binary_above) for m in column_metrics(found)]
    target = choose_tokens_target(groups)
    if target is not None:
        columns.insert(TOKENS_COLUMN_INDEX, Column(f"convergence/tokens_to_{target}",
                                                   f"tokens to val loss ≤ {target}", "tokens"))
    columns += [Column(key, header) for key, header in ratio_columns(found, shown=[c.key for c in columns])]
    return [c for c in columns if any(g.values(c.key) for g in groups)], target


def make_cell(group: Group, column: Column) -> Cell:
    """The values of the group's complete runs; for tokens to a target, the runs that did not
    reach it are kept as censored at the tokens of their last step (None when unknown)."""
    cell = Cell(group.values(column.key), len(group.complete), binary_above=column.binary_above)
    if column.kind == "tokens":
        cell.censored = [r.tokens_done for r in group.complete if r.value(column.key) is None]
    return cell


def build_table(groups: list[Group], baseline: str) -> Table:
    columns, target = table_columns(groups)
    cells = {(group.label, column.key): make_cell(group, column) for group in groups for column in columns}
    for column in columns:
        for group in groups:
            base = baseline_for(group, groups, baseline)
            if base is not None and base is not group:
                cell = cells[group.label, column.key]
                cell.comparison = compare(column, cell, cells[base.label, column.key])
        filled = [cells[g.label, column.key] for g in groups if cells[g.label, column.key].n]
        best = min((c.rank for c in filled), default=None)
        if any(c.rank > best for c in filled):  # nothing to single out when all tie
            for c in filled:
                c.best = c.rank == best
    correct([c.comparison for c in cells.values() if c.comparison is not None])
    base = next((g for g in groups if is_baseline(g, baseline)), None)
    return Table(columns, groups, cells, base, target, baseline)
