"""The numbers and the figure of docs/mechanism.md, "Attention design or optimizer", from the
sweep directories of that study:

    python docs/mechanism/optimizer_study.py SWEEP_DIR [SWEEP_DIR ...]

writes docs/mechanism/per_seed_optimizers.csv (one row per run), prints the mean ± std of
each (attention, optimizer) cell and Welch's t-tests (each optimizer against AdamW within
an attention design; explicit_scale and attn_bias against softmax within an optimizer), and
draws docs/mechanism/optimizers.png. The report (python -m outlier_lab.report ... --baseline
optim=adamw) gives the same table with every column; this adds the value drain and the
residual peak, which it reads per layer from metrics.csv, and the figure.
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
SUMMARY = {"val": "convergence/final_val_loss", "dormant_share": "outliers/domain/dormant/first_token_share",
           "dormant_sink_rate": "outliers/domain/dormant/sink_rate", "top1_median": "outliers/act/top1_over_median/max",
           "kurtosis": "outliers/act/avg_kurtosis", "excess_dormant": "outliers/domain/dormant/excess_loss",
           "excess_active": "outliers/domain/active/excess_loss", "w8a8": "compress/w8a8/ppl_ratio"}
LAST = {"value_drain": "outliers/attn/value_drain/layer_0", "residual_peak": "outliers/act/residual_peak/layer_0"}
TESTED = ["dormant_share", "dormant_sink_rate", "top1_median", "kurtosis", "value_drain", "val"]
ORDER = ["adamw", "muon", "orthoadam", "sgd lr 0.1", "sgd lr 0.3"]


def runs(dirs: list[str]) -> pd.DataFrame:
    rows = []
    for run in sorted(p.parent for d in dirs for p in Path(d).glob("*/summary.json")):
        overrides = dict(line.strip()[2:].split("=", 1) for line in (run / ".hydra/overrides.yaml").open()
                         if "=" in line)
        summary = json.loads((run / "summary.json").read_text())
        metrics = pd.read_csv(run / "metrics.csv")
        optim = overrides.get("optim", "adamw") + (f" lr {overrides['optim.lr']}" if "optim.lr" in overrides else "")
        rows.append({"attention": overrides["attention"], "optim": optim, "seed": int(overrides["seed"]),
                     **{name: summary.get(key) for name, key in SUMMARY.items()},
                     **{name: metrics[key].dropna().iloc[-1] for name, key in LAST.items()}})
    return pd.DataFrame(rows).sort_values(["attention", "optim", "seed"])


def welch(frame: pd.DataFrame, a: dict, b: dict) -> dict[str, float]:
    pick = lambda sel: frame[(frame[list(sel)] == pd.Series(sel)).all(axis=1)]  # noqa: E731
    x, y = pick(a), pick(b)
    return {c: round(float(stats.ttest_ind(x[c], y[c], equal_var=False).pvalue), 4) for c in TESTED}


def figure(frame: pd.DataFrame, path: Path) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8), layout="constrained")
    panels = [("dormant_share", "first-token share, dormant queries"), ("dormant_sink_rate", "sink rate, dormant queries"),
              ("top1_median", "top-1 / median |h| (max)")]
    attentions = ["softmax", "explicit_scale", "attn_bias"]
    for ax, (column, title) in zip(axes, panels):
        for i, attention in enumerate(attentions):
            for j, optim in enumerate(ORDER):
                values = frame[(frame.attention == attention) & (frame.optim == optim)][column]
                x = j + (i - 1) * 0.26
                ax.bar(x, values.mean(), width=0.24, color=f"C{i}", alpha=0.55, label=attention if j == 0 else None)
                ax.plot([x] * len(values), values, "k.", markersize=3)
        ax.set_xticks(range(len(ORDER)), ORDER, fontsize=8)
        ax.set_title(title, fontsize=10)
    axes[0].legend(fontsize=8, frameon=False)
    fig.suptitle("Bigram-Backcopy, 1 layer, 1,000 steps: mean over 5 seeds (dots: seeds)")
    fig.savefig(path, dpi=110)


def main() -> None:
    frame = runs(sys.argv[1:])
    frame.to_csv(HERE / "per_seed_optimizers.csv", index=False)
    cells = frame.groupby(["attention", "optim"])[list(SUMMARY)[:6] + list(LAST)]
    pd.set_option("display.width", 250)
    pd.set_option("display.max_columns", 20)
    print((cells.mean().round(3).astype(str) + " ± " + cells.std().round(3).astype(str)).assign(n=cells.size()))
    print("\nWelch p, each optimizer against adamw, same attention:")
    for attention in sorted(frame.attention.unique()):
        for optim in ORDER[1:]:
            print(f"  {attention:15} {optim:11}", welch(frame, {"attention": attention, "optim": optim},
                                                       {"attention": attention, "optim": "adamw"}))
    print("\nWelch p, against softmax, same optimizer:")
    for optim in ORDER:
        for attention in ("explicit_scale", "attn_bias"):
            print(f"  {optim:11} {attention:15}", welch(frame, {"attention": attention, "optim": optim},
                                                       {"attention": "softmax", "optim": optim}))
    figure(frame, HERE / "optimizers.png")


if __name__ == "__main__":
    main()
