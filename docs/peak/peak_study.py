"""The tables and the figure of docs/peak.md's study, from the committed files in docs/peak/runs/:
one per-run CSV per sweep of study.sh (the report's ``--runs-csv`` format), the curves of the
figure (one row per run and probe step), each sweep's cost, and the interventions on the
softmax checkpoints.

    docs/peak/study.sh TINYSHAKESPEARE_TXT                 # the 28 jobs (resumable)
    python docs/peak/peak_study.py collect outputs/sweeps/peak   # -> docs/peak/runs/
    python docs/peak/peak_study.py interventions outputs/sweeps/peak   # analyze.py on the softmax runs
    python docs/peak/peak_study.py                         # every table, and study.png

The tables use the report's own cells and tests (``outlier_lab.report``), as docs/mechanism.md's
do: a yes/no outcome (a dormant sink: sink rate > 0.5) is tested with Fisher's exact test, any
other value with Welch's t-test, no test where neither group varies; each arm is compared with
softmax under AdamW on the same text, and the marks are Holm-corrected over the table.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from outlier_lab.metrics.growth import PEAK_CURVE, power_law_fit, step_to_reach  # noqa: E402
from outlier_lab.report.declarations import column_metrics  # noqa: E402
from outlier_lab.report.load import load_runs, read_metrics_csv  # noqa: E402
from outlier_lab.report.run_table import LAST, read_runs_csv, sweep_cost, write_runs_csv  # noqa: E402
from outlier_lab.report.study_cells import cells_against, family, shown  # noqa: E402
from outlier_lab.report.table import Column, Group  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from regime_tries import steps_text  # noqa: E402

HERE = Path(__file__).resolve().parent
RUNS = HERE / "runs"
FIGURE = HERE / "study.png"
SWEEPS = {"stdlib": "stdlib", "shakespeare": "tinyshakespeare"}  # study.sh's sweep -> its text
ARMS = ["softmax", "softmax_sgd", "explicit_scale", "attn_bias", "gated", "sigmoid", "relu"]  # the table's order
VALUE_DRAIN = [f"outliers/attn/value_drain/layer_{i}" for i in range(3)]
TOP_CHANNEL_BOS = "outliers/act/top_channel_initial_share"  # a curve: its last probe's value is kept
DRAIN_MIN = "value_drain_min_over_layers"  # derived per run from the last probe's VALUE_DRAIN
CURVES = {PEAK_CURVE: "peak", "outliers/act/top1_over_median/max": "top1_over_median",
          "outliers/act/max_abs/max": "max_abs"}
SINK_RATE = "outliers/domain/dormant/sink_rate"
MAIN = [("convergence/final_val_loss", "final val loss"), (PEAK_CURVE, "residual peak ‖h₀‖/median"),
        ("outliers/act/residual_peak/growth_rate", "peak growth (log-log slope)"),
        ("outliers/act/top1_over_median/max", "top1/median \\|h\\|"), ("outliers/act/max_abs/max", "max \\|h\\|"),
        (LAST + TOP_CHANNEL_BOS, "top channel's share on BOS"),
        (SINK_RATE, "seeds with a dormant sink [95% CI]"), (DRAIN_MIN, "value drain ‖v₀‖/median (min over layers)"),
        ("outliers/domain/dormant/excess_loss", "excess loss (dormant)"), ("compress/w8a8/ppl_ratio", "W8A8 ppl ratio")]
# The interventions, run on every softmax checkpoint at Sun et al.'s criterion (massive: |h| > 100
# and >= 1000 x the median) and at a relaxed one that catches this model's largest entries
INTERVENE = ["massive_zero", "massive_mean", "sink_drop"]
CRITERIA = {"sun": [], "ratio20": ["thresholds.massive_ratio=20"]}


def arm_of(run) -> str:
    return run.variant + ("_sgd" if run.overrides.get("optim") == "sgd" else "")


# --- collection (from the run directories) -------------------------------------------------

def collect(root: Path) -> None:
    """The per-run CSV, the curves and the cost of each sweep under root."""
    RUNS.mkdir(exist_ok=True)
    curves, costs = [], []
    for sweep in SWEEPS:
        if not (root / sweep).is_dir():
            print(f"{sweep}: not run yet ({root / sweep})")
            continue
        runs = load_runs([root / sweep])
        print(f"{sweep}: {len(runs)} runs, {sum(r.complete for r in runs)} complete")
        write_runs_csv(runs, RUNS / f"{sweep}.csv", [*VALUE_DRAIN, TOP_CHANNEL_BOS])
        costs.append(sweep_cost(root / sweep, runs))
        for run in runs:
            metrics = read_metrics_csv(run.path / "metrics.csv", wanted=lambda key: key in CURVES)
            frame = metrics[list(CURVES)].dropna(how="all").rename(columns=CURVES).rename_axis("step").reset_index()
            curves.append(frame.assign(sweep=sweep, arm=arm_of(run), seed=run.seed))
    pd.concat(curves).to_csv(RUNS / "curves.csv", index=False, float_format="%.6g")
    pd.DataFrame(costs).to_csv(RUNS / "costs.csv", index=False)


def interventions(root: Path) -> None:
    """analyze.py with INTERVENE on each softmax (AdamW) run's last.ckpt, at each criterion."""
    rows = []
    for sweep in SWEEPS:
        for run in sorted((root / sweep).glob("softmax_s*")):
            seed = run.name.removeprefix("softmax_s")
            if not (run.is_dir() and seed.isdigit()):  # not softmax_sgd_s*
                continue
            for criterion, extra in CRITERIA.items():
                out = run / f"interventions_{criterion}"
                if not (out / "interventions.json").exists():
                    subprocess.run([sys.executable, "analyze.py", f"ckpt={run / 'checkpoints' / 'last.ckpt'}",
                                    f"intervene=[{','.join(INTERVENE)}]", *extra, f"hydra.run.dir={out}"],
                                   cwd=ROOT, check=True, capture_output=True)
                for row in json.loads((out / "interventions.json").read_text()):
                    rows.append({"sweep": sweep, "seed": int(seed), "criterion": criterion,
                                 "intervention": row["name"], "ppl": row["ppl"], "kl": row["kl"],
                                 "entries": row["details"].get("entries", "")})
    pd.DataFrame(rows).to_csv(RUNS / "interventions.csv", index=False, float_format="%.6g")


# --- tables --------------------------------------------------------------------------------

def load_groups() -> list[Group]:
    """One group per arm and text, in ARMS order, from the committed per-run CSVs."""
    groups = []
    for sweep in SWEEPS:
        path = RUNS / f"{sweep}.csv"
        if not path.exists():
            continue
        by_arm: dict[str, list] = {}
        for run, row in zip(read_runs_csv(path), pd.read_csv(path).to_dict("records")):
            run.summary.update({key: row[key] for key in row if key.startswith(LAST) and pd.notna(row[key])})
            drains = [row[LAST + key] for key in VALUE_DRAIN if pd.notna(row.get(LAST + key))]
            run.summary[DRAIN_MIN] = min(drains) if drains else None
            by_arm.setdefault(arm_of(run), []).append(run)
        for arm in ARMS:
            if arm in by_arm:
                groups.append(Group(f"{arm} ({sweep})", arm, None, by_arm[arm], (("text", SWEEPS[sweep]),)))
    return groups


def results_table() -> str:
    """One row per arm and text; each cell tested against softmax under AdamW on the same text."""
    groups = load_groups()
    rules = {m.key: m.binary_above for m in column_metrics({key for key, _ in MAIN})}
    cols = [Column(key, header, binary_above=rules.get(key)) for key, header in MAIN]
    cells = cells_against(groups, cols, lambda g: next(b for b in groups if b.variant == "softmax"
                                                          and b.setting == g.setting))
    lines = ["| arm | text | runs | " + " | ".join(h for _, h in MAIN) + " |", "|" + "---|" * (3 + len(MAIN))]
    for g in groups:
        lines.append(f"| {g.variant} | {dict(g.setting)['text']} | {len(g.complete)} | "
                     + " | ".join(shown(cells[g.label, c.key]) for c in cols) + " |")
    return "\n".join(lines + ["", family(cells, "each arm against softmax under AdamW on the same text")])


def growth_table() -> str:
    """Per run: the peak at the end, its highest value and step, the fitted slope and where the
    fit reaches 5x and 100x (outlier_lab.metrics.growth), and the per-entry ratio at the end."""
    curves = pd.read_csv(RUNS / "curves.csv")
    lines = ["| arm | text | seed | peak at the end | highest peak (step) | slope, 2nd half | "
             "fit reaches 5× / 100× at step | top1/median at the end |", "|---|---|---|---|---|---|---|---|"]
    for arm in ARMS:
        for sweep in SWEEPS:
            for seed, run in curves[(curves.arm == arm) & (curves.sweep == sweep)].groupby("seed"):
                probes = run.dropna(subset=["peak"])
                slope, intercept = power_law_fit(probes["step"], probes["peak"])
                top, end = probes.loc[probes["peak"].idxmax()], probes.iloc[-1]
                lines.append(f"| {arm} | {SWEEPS[sweep]} | {seed} | {end['peak']:.2f} | {top['peak']:.2f} "
                             f"({int(top['step']):,}) | {slope:.2f} | {steps_text(step_to_reach(5, slope, intercept))} / "
                             f"{steps_text(step_to_reach(100, slope, intercept))} | {end['top1_over_median']:.1f} |")
    return "\n".join(lines)


def interventions_table() -> str:
    """Per softmax run: each intervention's perplexity as a ratio to the unedited model's, its
    KL to it, and how many entries it edited (descriptive: the runs differ too much to pool)."""
    frame = pd.read_csv(RUNS / "interventions.csv")
    frame["run"] = frame.sweep.map(SWEEPS) + ", seed " + frame.seed.astype(str)
    runs = list(dict.fromkeys(frame.run))
    base = frame[frame.intervention == "baseline"].set_index(["criterion", "run"]).ppl
    lines = ["| criterion | intervention | " + " | ".join(runs) + " |", "|---|---|" + "---|" * len(runs)]
    for (criterion, name), rows in frame[frame.intervention != "baseline"].groupby(["criterion", "intervention"],
                                                                                sort=False):
        cells = []
        for row in rows.set_index("run").loc[runs].itertuples():
            edited = "" if pd.isna(row.entries) else f", {int(row.entries):,} entries"
            cells.append(f"{row.ppl / base[criterion, row.Index]:.3f} (KL {row.kl:.2g}{edited})")
        lines.append(f"| {criterion} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cost_table() -> str:
    costs = pd.read_csv(RUNS / "costs.csv")
    lines = ["| sweep | jobs | complete | wall time | training per job (mean) |", "|---|---|---|---|---|"]
    for row in costs.itertuples():
        lines.append(f"| {row.sweep} | {row.jobs} | {row.complete} | {int(row.wall_s) // 60} min {int(row.wall_s) % 60} s | {row.train_s_mean:.0f} s |")
    return "\n".join(lines)


TABLES = {"cost": cost_table, "results": results_table, "growth": growth_table, "interventions": interventions_table}


def tables() -> dict[str, str]:
    return {name: make() for name, make in TABLES.items()}


# --- the figure ----------------------------------------------------------------------------

def figure(path: Path = FIGURE) -> None:
    """Per text: the residual peak and the per-entry top-1 / median over steps, log-log, a line
    per arm (mean over seeds) with its min-max band."""
    from outlier_lab import figure_style as style
    from outlier_lab.report.figures import aggregate

    curves = pd.read_csv(RUNS / "curves.csv")
    colors = style.colors(ARMS)
    fig = style.new_figure(12.0, 4.2 * len(SWEEPS))
    for row, sweep in enumerate(SWEEPS):
        for col, (key, title) in enumerate([("peak", "residual peak ||h_0|| / median ||h_j||"),
                                            ("top1_over_median", "top-1 / median |h|")]):
            ax = fig.add_subplot(len(SWEEPS), 2, 2 * row + col + 1)
            for arm in ARMS:
                runs = curves[(curves.sweep == sweep) & (curves.arm == arm)].dropna(subset=[key])
                agg = aggregate([(r["step"].to_numpy(), r[key].to_numpy()) for _, r in runs.groupby("seed")])
                if agg is None:
                    continue
                steps, mean, lo, hi = (a[agg[0] > 0] for a in agg)
                ax.fill_between(steps, lo, hi, color=colors[arm], alpha=0.15, linewidth=0)
                ax.plot(steps, mean, color=colors[arm], linewidth=1.5, label=f"{arm} (n={runs.seed.nunique()})")
            ax.set_xscale("log")
            ax.set_yscale("log")
            style.step_panel(ax, f"{title}, {SWEEPS[sweep]}")
    style.outside_legend(fig, *fig.axes[0].get_legend_handles_labels())
    style.save(fig, path)


if __name__ == "__main__":
    command = sys.argv[1:2]
    if command == ["collect"]:
        collect(Path(sys.argv[2]))
    elif command == ["interventions"]:
        interventions(Path(sys.argv[2]))
    else:
        for name, table in tables().items():
            print(f"## {name}\n\n{table}\n")
        figure()
