"""The tables of docs/study.md (the CPU study), from the committed per-run CSV docs/study/runs.csv.

    TINYSHAKESPEARE_PATH=... python train.py -m +experiment=cpu_study hydra/launcher=joblib \\
        hydra.launcher.n_jobs=2 torch_threads=1 hydra.sweep.dir=outputs/sweeps/cpu_study
    python docs/study/study_tables.py collect outputs/sweeps/cpu_study   # the per-run CSV
    python docs/study/study_tables.py                                    # the tables

The results table is the report's own (``python -m outlier_lab.report docs/study/runs.csv``
prints the same cells and marks: its tests, Holm-corrected over the whole table); the per-seed
table and the spread between seeds are descriptive. docs/doc_tables.py puts them into the page.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from outlier_lab.report.load import load_runs  # noqa: E402
from outlier_lab.report.notes import significance_notes  # noqa: E402
from outlier_lab.report.render import markdown_table  # noqa: E402
from outlier_lab.report.run_table import LAST, read_runs_csv, sweep_cost, write_runs_csv  # noqa: E402
from outlier_lab.report.table import build_table, group_runs  # noqa: E402

HERE = Path(__file__).resolve().parent
CSV = HERE / "runs.csv"
COSTS = HERE / "costs.csv"
LAST_CURVES = ["outliers/attn/value_drain_min/layer_*", "outliers/act/residual_peak/layer_*",
               "outliers/act/top_channel_*_share"]
CLASSES = ("initial", "strong", "weak", "other")  # the token classes of the top channel's share
SPREAD = {"final val loss": "convergence/final_val_loss", "W8A8 ppl ratio": "compress/w8a8/ppl_ratio",
          "avg kurtosis": "outliers/act/avg_kurtosis", "first-token share": "outliers/attn/first_token_share/max",
          "top1/median": "outliers/act/top1_over_median/max"}


def collect(sweep: Path) -> None:
    runs = load_runs([sweep])
    print(f"{sweep}: {len(runs)} runs, {sum(r.complete for r in runs)} complete")
    write_runs_csv(runs, CSV, LAST_CURVES)
    pd.DataFrame([sweep_cost(sweep, runs)]).to_csv(COSTS, index=False)


def cost_line() -> str:
    cost = pd.read_csv(COSTS).iloc[0]
    wall = int(cost.wall_s)
    return (f"{cost.jobs} jobs, {cost.complete} complete, in **{wall // 60} min {wall % 60} s** of wall time "
            f"(two single-threaded jobs at a time); training took {cost.train_s_mean:.0f} s per job on average.")


def frame() -> pd.DataFrame:
    return pd.read_csv(CSV)


def results_table() -> str:
    runs = read_runs_csv(CSV)
    table = build_table(group_runs(runs, "softmax"), "softmax")
    return markdown_table(table) + "\n\n" + "\n".join(significance_notes(table, "softmax"))


def top_class(row) -> str:
    """The token class that holds at least half of the largest channel's big entries (— if none)."""
    shares = {c: row.get(f"{LAST}outliers/act/top_channel_{c}_share", np.nan) for c in CLASSES}
    best = max(shares, key=lambda c: -1 if np.isnan(shares[c]) else shares[c])
    return best if shares[best] >= 0.5 else "—"


def layers(row, key: str) -> list[float]:
    return [v for name, v in row.items() if name.startswith(LAST + key + "/layer_") and pd.notna(v)]


def per_seed_table() -> str:
    runs = frame().sort_values(["variant", "seed"])
    heads = ["top1/median", "top channel on", "first-token share", "sink rate", "final val loss",
             "W8A8 / W8A8-linear ratio", "value drain (min)", "residual peak (max)", "train s"]
    lines = ["| variant | " + " | ".join(f"{h} s0 / s1" if h != "top channel on" else f"{h} (s0 / s1)"
                                         for h in heads) + " |", "|---|" + "---|" * len(heads)]
    for variant, seeds in runs.groupby("variant", sort=True):
        rows = [row for _, row in seeds.iterrows()]

        def both(fmt) -> str:
            return " / ".join(fmt(row) for row in rows)

        cells = [both(lambda r: f"{r['outliers/act/top1_over_median/max']:.1f}"), both(top_class),
                 both(lambda r: f"{r['outliers/attn/first_token_share/max']:.3f}"),
                 both(lambda r: f"{r['outliers/attn/sink_rate']:.3f}"),
                 both(lambda r: f"{r['convergence/final_val_loss']:.3f}"),
                 both(lambda r: f"{r['compress/w8a8/ppl_ratio']:.3f} vs {r['compress/w8a8_linear/ppl_ratio']:.3f}"),
                 both(lambda r: f"{min(layers(r, 'outliers/attn/value_drain_min')):.2f}"),
                 both(lambda r: f"{max(layers(r, 'outliers/act/residual_peak')):.1f}"),
                 both(lambda r: f"{r['convergence/train_seconds']:.0f}")]
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def spread_table() -> str:
    """Between the two seeds of each variant: the relative difference |s0 - s1| / mean (median and
    largest over the variants), and Spearman's rank correlation of the two seeds' orderings."""
    runs = frame()
    lines = ["| metric | seeds differ by (median over variants) | at most | Spearman ρ, seed 0's ordering against seed 1's |",
             "|---|---|---|---|"]
    for name, key in SPREAD.items():
        wide = runs.pivot(index="variant", columns="seed", values=key).dropna()
        s0, s1 = wide[0], wide[1]
        relative = (s0 - s1).abs() / ((s0 + s1) / 2).abs()
        rho = stats.spearmanr(s0, s1).statistic
        lines.append(f"| {name} | {relative.median():.1%} | {relative.max():.1%} ({relative.idxmax()}) | {rho:.2f} |")
    return "\n".join(lines)


def tables() -> dict[str, str]:
    return {"cost": cost_line(), "results": results_table(), "per_seed": per_seed_table(), "spread": spread_table()}


if __name__ == "__main__":
    if sys.argv[1:2] == ["collect"]:
        collect(Path(sys.argv[2]))
    else:
        for name, table in tables().items():
            print(f"## {name}\n\n{table}\n")
