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
from scipy import stats

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
TESTED = ["dormant_share", "dormant_sink_rate", "top1_median", "kurtosis", "value_drain", "val"]
JORDAN = "muon original lr 0.02"
ORDER = ["adamw", "muon", JORDAN, "orthoadam", "sgd lr 0.1", "sgd lr 0.3"]
NAMES = {"adamw": "AdamW", "muon": "Muon (Moonlight)", JORDAN: "Muon (Jordan)", "orthoadam": "OrthoAdam",
         "sgd lr 0.1": "SGD lr 0.1", "sgd lr 0.3": "SGD lr 0.3"}
ATTENTIONS = ["softmax", "explicit_scale", "attn_bias"]
# The table's columns: (CSV column, decimals, heading).
TABLE = [("val", 3, "val loss"), ("dormant_share", 2, "dormant share"), ("dormant_sink_rate", 2, "dormant sink rate"),
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


def welch(x: pd.DataFrame, y: pd.DataFrame) -> dict[str, float]:
    return {c: round(float(stats.ttest_ind(x[c], y[c], equal_var=False).pvalue), 4) for c in TESTED}


def cell(values: pd.Series, decimals: int, marks: str) -> str:
    text = "0" if (values == 0).all() else f"{values.mean():.{decimals}f} ± {values.std():.{decimals}f}"
    return f"{text} {marks}" if marks else text


def markdown(frame: pd.DataFrame) -> str:
    """The table of docs/mechanism.md: ᵃ p < 0.05 against AdamW with the same attention, ˢ p < 0.05
    against softmax with the same optimizer (Welch); the last column counts seeds with a sink."""
    lines = ["| attention | optimizer | " + " | ".join(h for _, _, h in TABLE) + " | seeds with a sink |",
             "|---|---|" + "---|" * (len(TABLE) + 1)]
    for attention in ATTENTIONS:
        for optim in [o for o in ORDER if o in set(frame.optim)]:
            own = pick(frame, attention, optim)
            against = {"ᵃ": pick(frame, attention, "adamw") if optim != "adamw" else None,
                       "ˢ": pick(frame, "softmax", optim) if attention != "softmax" else None}
            cells = []
            for column, decimals, _ in TABLE:
                marks = "".join(mark for mark, other in against.items() if other is not None
                                and stats.ttest_ind(own[column], other[column], equal_var=False).pvalue < 0.05)
                cells.append(cell(own[column], decimals, marks))
            sinks = f"{int((own.dormant_sink_rate > SINK).sum())}/{len(own)}"
            lines.append(f"| {attention} | {NAMES.get(optim, optim)} | " + " | ".join(cells) + f" | {sinks} |")
    return "\n".join(lines)


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
    print("\n" + markdown(frame))
    order = [o for o in ORDER if o in set(frame.optim)]
    print("\nWelch p, each optimizer against adamw, same attention:")
    for attention in ATTENTIONS:
        for optim in order[1:]:
            print(f"  {attention:15} {optim:21}", welch(pick(frame, attention, optim), pick(frame, attention, "adamw")))
    print("\nWelch p, against softmax, same optimizer:")
    for optim in order:
        for attention in ATTENTIONS[1:]:
            print(f"  {optim:21} {attention:15}", welch(pick(frame, attention, optim), pick(frame, "softmax", optim)))
    if JORDAN in order:
        print("\nWelch p, Muon with Jordan's step-size rule against Muon with Moonlight's, same attention:")
        for attention in ATTENTIONS:
            print(f"  {attention:15}", welch(pick(frame, attention, JORDAN), pick(frame, attention, "muon")))
    figure(frame, HERE / "optimizers.png")


if __name__ == "__main__":
    main()
