"""The numbers and the figure of docs/mechanism.md, "Attention design or optimizer".

    python docs/mechanism/optimizer_study.py                  # from the committed per-seed CSV
    python docs/mechanism/optimizer_study.py SWEEP_DIR [...]  # add or replace runs first

With sweep directories, their runs replace the rows of docs/mechanism/per_seed_optimizers.csv
that have the same (attention, optimizer, seed), and every other row is kept: a new arm is
added to the study without the sweeps of the old ones. Then, from that CSV: the markdown table
of docs/mechanism.md (mean ± std per cell, Welch's t-test marks, and how many seeds form a
dormant sink), each optimizer against AdamW and each design against softmax as Welch p-values,
Muon's two step-size rules against each other, and the figure docs/mechanism/optimizers.png.
The report (python -m outlier_lab.report ... --baseline optim=adamw) gives the same cells with
every column; this adds the value drain and the residual peak, which it reads per layer from
metrics.csv.

An optimizer is named by its config plus what its sweep overrode: ``sgd lr 0.3`` (optim.lr),
``muon original lr 0.02`` (optim.optimizer.adjust_lr_fn and optim.optimizer.muon_lr).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib
import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from outlier_lab.report.compare import Comparison, compare, correct  # noqa: E402
from outlier_lab.report.stats import clopper_pearson  # noqa: E402
from outlier_lab.report.table import Cell, Column  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).resolve().parent
CSV = HERE / "per_seed_optimizers.csv"
KEY = ["attention", "optim", "seed"]
SUMMARY = {"val": "convergence/final_val_loss", "dormant_share": "outliers/domain/dormant/first_token_share",
           "dormant_sink_rate": "outliers/domain/dormant/sink_rate", "top1_median": "outliers/act/top1_over_median/max",
           "kurtosis": "outliers/act/avg_kurtosis", "excess_dormant": "outliers/domain/dormant/excess_loss",
           "excess_active": "outliers/domain/active/excess_loss", "w8a8": "compress/w8a8/ppl_ratio"}
LAST = {"value_drain": "outliers/attn/value_drain/layer_0", "residual_peak": "outliers/act/residual_peak/layer_0"}
JORDAN = "muon original lr 0.02"
ORDER = ["adamw", "muon", JORDAN, "orthoadam", "sgd lr 0.1", "sgd lr 0.3"]
NAMES = {"adamw": "AdamW", "muon": "Muon (Moonlight)", JORDAN: "Muon (Jordan)", "orthoadam": "OrthoAdam",
         "sgd lr 0.1": "SGD lr 0.1", "sgd lr 0.3": "SGD lr 0.3"}
ATTENTIONS = ["softmax", "explicit_scale", "attn_bias"]
# The table's columns: (CSV column, decimals, heading).
TABLE = [("val", 3, "val loss"), ("dormant_share", 2, "dormant share"),
         ("dormant_sink_rate", 2, "seeds with a sink [95% CI]"),
         ("top1_median", 1, "top1/median"), ("kurtosis", 2, "kurtosis"), ("value_drain", 2, "value drain")]
SINK = 0.5  # a seed "forms a dormant sink" when its dormant sink rate exceeds this


def optim_name(overrides: dict[str, str]) -> str:
    name = overrides.get("optim", "adamw")
    if "optim.optimizer.adjust_lr_fn" in overrides:
        name += f" {overrides['optim.optimizer.adjust_lr_fn']}"
    if "optim.optimizer.muon_lr" in overrides:
        name += f" lr {overrides['optim.optimizer.muon_lr']}"
    if "optim.lr" in overrides:
        name += f" lr {overrides['optim.lr']}"
    return name


def runs(dirs: list[str]) -> pd.DataFrame:
    rows = []
    for run in sorted(p.parent for d in dirs for p in Path(d).glob("*/summary.json")):
        overrides = dict(line.strip()[2:].split("=", 1) for line in (run / ".hydra/overrides.yaml").open()
                         if "=" in line)
        summary = json.loads((run / "summary.json").read_text())
        metrics = pd.read_csv(run / "metrics.csv")
        rows.append({"attention": overrides["attention"], "optim": optim_name(overrides),
                     "seed": int(overrides["seed"]),
                     **{name: summary.get(key) for name, key in SUMMARY.items()},
                     **{name: metrics[key].dropna().iloc[-1] for name, key in LAST.items()}})
    return pd.DataFrame(rows).sort_values(KEY)


def merged(dirs: list[str]) -> pd.DataFrame:
    """The committed per-seed rows, with the runs of ``dirs`` replacing those of the same key."""
    frame = pd.read_csv(CSV)
    if dirs:
        frame = pd.concat([frame, runs(dirs)]).drop_duplicates(KEY, keep="last").sort_values(KEY)
    return frame.reset_index(drop=True)


def pick(frame: pd.DataFrame, attention: str, optim: str) -> pd.DataFrame:
    return frame[(frame.attention == attention) & (frame.optim == optim)]


def optimizers(frame: pd.DataFrame) -> list[str]:
    return [o for o in ORDER if o in set(frame.optim)]


def column(name: str) -> Column:
    """The table's column of a CSV column: the sink rate is the declared yes/no outcome (a
    seed forms a sink when its dormant sink rate exceeds SINK), every other one a value."""
    return Column(name, name, binary_above=SINK if name == "dormant_sink_rate" else None)


def cell(frame: pd.DataFrame, attention: str, optim: str, name: str) -> Cell:
    values = pick(frame, attention, optim)[name].astype(float).tolist()
    return Cell(values, len(values), binary_above=column(name).binary_above)


def comparisons(frame: pd.DataFrame) -> dict[tuple[str, str, str, str], Comparison]:
    """(attention, optimizer, column, against) -> the column's test of that cell against the
    same attention under AdamW (against "ᵃ") and against softmax under the same optimizer
    ("ˢ"), Holm-corrected over all of them: the table's family."""
    tests = {}
    for attention in ATTENTIONS:
        for optim in optimizers(frame):
            against = {"ᵃ": (attention, "adamw"), "ˢ": ("softmax", optim)}
            for mark, (base_attention, base_optim) in against.items():
                if (base_attention, base_optim) == (attention, optim):
                    continue
                for name, *_ in TABLE:
                    tests[attention, optim, name, mark] = compare(column(name), cell(frame, attention, optim, name),
                                                                  cell(frame, base_attention, base_optim, name))
    correct(list(tests.values()))
    return tests


def markdown(frame: pd.DataFrame) -> str:
    """The table of docs/mechanism.md: mean ± std per cell (seeds with a sink: k/n with the
    Clopper-Pearson 95% interval); ᵃ: Holm-corrected p < 0.05 against AdamW with the same
    attention, ˢ: against softmax with the same optimizer."""
    tests = comparisons(frame)
    lines = ["| attention | optimizer | " + " | ".join(h for _, _, h in TABLE) + " |",
             "|---|---|" + "---|" * len(TABLE)]
    for attention in ATTENTIONS:
        for optim in optimizers(frame):
            cells = []
            for name, decimals, _ in TABLE:
                marks = "".join(mark for mark in ("ᵃ", "ˢ") if (c := tests.get((attention, optim, name, mark)))
                                and c.mark)
                cells.append(shown(cell(frame, attention, optim, name), decimals) + (f" {marks}" if marks else ""))
            lines.append(f"| {attention} | {NAMES.get(optim, optim)} | " + " | ".join(cells) + " |")
    tested = [c for c in tests.values() if c.tested]
    untested = len(tests) - len(tested)
    return "\n".join(lines + ["", f"Holm's family: the {len(tested)} comparisons of this table with a p-value "
                              f"(every cell against AdamW with the same attention and against softmax with the same "
                              f"optimizer; Welch's t-test, Fisher's exact test for the seeds with a sink); "
                              f"{untested} comparisons have no test (neither side varies)."])


def shown(values: Cell, decimals: int) -> str:
    if values.binary_above is not None:
        low, high = clopper_pearson(values.yes, values.n)
        return f"{values.yes}/{values.n} [{low:.2f}, {high:.2f}]"
    series = pd.Series(values.values)
    return "0" if (series == 0).all() else f"{series.mean():.{decimals}f} ± {series.std():.{decimals}f}"


def jordan_table(frame: pd.DataFrame) -> str:
    """Muon with Jordan's step-size rule against Moonlight's, per attention: the table's own
    Holm family over its tests."""
    names = [("dormant_share", 2), ("dormant_sink_rate", 2), ("val", 3)]
    tests = {(a, n): compare(column(n), cell(frame, a, JORDAN, n), cell(frame, a, "muon", n))
             for a in ATTENTIONS for n, _ in names}
    correct(list(tests.values()))

    def p(c: Comparison) -> str:
        return "no variance" if not c.tested else f"p = {c.p:.2g}, Holm {c.p_holm:.2g}"

    lines = ["| attention | dormant share, Jordan against Moonlight | seeds with a sink | final val loss |",
             "|---|---|---|---|"]
    for attention in ATTENTIONS:
        parts = [f"{shown(cell(frame, attention, JORDAN, n), d)} against {shown(cell(frame, attention, 'muon', n), d)} "
                 f"({p(tests[attention, n])})" for n, d in names]
        lines.append(f"| {attention} | " + " | ".join(parts) + " |")
    tested = sum(c.tested for c in tests.values())
    return "\n".join(lines + ["", f"Welch's t-test, Fisher's exact test for the seeds with a sink; Holm's family: "
                              f"the {tested} comparisons of this table with a p-value."])


def tables() -> dict[str, str]:
    frame = merged([])
    return {"optimizers": markdown(frame), "jordan": jordan_table(frame)}


def figure(frame: pd.DataFrame, path: Path) -> None:
    order = [o for o in ORDER if o in set(frame.optim)]
    fig, axes = plt.subplots(1, 3, figsize=(16, 3.8), layout="constrained")
    panels = [("dormant_share", "first-token share, dormant queries"), ("dormant_sink_rate", "sink rate, dormant queries"),
              ("top1_median", "top-1 / median |h| (max)")]
    for ax, (column, title) in zip(axes, panels):
        for i, attention in enumerate(ATTENTIONS):
            for j, optim in enumerate(order):
                values = pick(frame, attention, optim)[column]
                x = j + (i - 1) * 0.26
                ax.bar(x, values.mean(), width=0.24, color=f"C{i}", alpha=0.55, label=attention if j == 0 else None)
                ax.plot([x] * len(values), values, "k.", markersize=3)
        ax.set_xticks(range(len(order)), [NAMES.get(o, o).replace(" (", "\n(") for o in order], fontsize=7)
        ax.set_title(title, fontsize=10)
    axes[0].legend(fontsize=8, frameon=False)
    fig.suptitle("Bigram-Backcopy, 1 layer, 1,000 steps: mean over 5 seeds (dots: seeds)")
    fig.savefig(path, dpi=110)


def main() -> None:
    frame = merged(sys.argv[1:])
    if sys.argv[1:]:
        frame.to_csv(CSV, index=False)
    cells = frame.groupby(["attention", "optim"])[list(SUMMARY)[:6] + list(LAST)]
    pd.set_option("display.width", 250)
    pd.set_option("display.max_columns", 20)
    print((cells.mean().round(3).astype(str) + " ± " + cells.std().round(3).astype(str)).assign(n=cells.size()))
    print("\n" + markdown(frame) + "\n\n" + jordan_table(frame))
    print("\nEvery comparison, p (Holm p):")
    for (attention, optim, name, mark), c in comparisons(frame).items():
        against = "AdamW" if mark == "ᵃ" else "softmax"
        print(f"  {attention:15} {optim:21} {name:18} against {against:8}",
              "no variance" if not c.tested else f"{c.p:.4f} ({c.p_holm:.4f}){' ' + c.mark if c.mark else ''}")
    figure(frame, HERE / "optimizers.png")


if __name__ == "__main__":
    main()
