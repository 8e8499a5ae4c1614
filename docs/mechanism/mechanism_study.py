"""The tables and the figure of docs/mechanism.md's study and its replication, from the
committed per-run CSVs in docs/mechanism/runs/ (one per sweep of replication.sh, written by
collect_runs.py).

    docs/mechanism/replication.sh TINYSHAKESPEARE_TXT                      # the sweeps (resumable)
    python train.py -m +experiment=sink_optimizers attention=softmax seed=0 optim=sgd \
        optim.lr=0.03,0.1,0.3,1.0 optim.min_lr=0.003 hydra.sweep.dir=outputs/sweeps/replication_extra/sgd_lr
    python docs/mechanism/mechanism_study.py collect outputs/sweeps/replication outputs/sweeps/replication_extra
    python docs/mechanism/mechanism_study.py                               # the tables and the figure

The tables are built with the report's own cells and tests (``outlier_lab.report``): a yes/no
outcome (a dormant sink: sink rate > 0.5, as the metric declares) is counted per run and
tested with Fisher's exact test, any other value with Welch's t-test, no test where neither
group varies; the marks are Holm-corrected over the comparisons of each table (its family,
named under it by ``family()``), not over the report's whole table. docs/doc_tables.py puts
each table into the doc; tests/test_doc_tables.py fails when the doc and this script differ.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from outlier_lab.report.compare import Comparison, compare, correct  # noqa: E402
from outlier_lab.report.study_cells import STAR, cells_against, family, shown  # noqa: E402
from outlier_lab.report.declarations import column_metrics  # noqa: E402
from outlier_lab.report.load import Run  # noqa: E402
from outlier_lab.report.render import format_cell  # noqa: E402
from outlier_lab.report.run_table import LAST, read_runs_csv  # noqa: E402
from outlier_lab.report.table import Cell, Column, Group, baseline_for, group_runs, make_cell  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from collect_runs import CURVES, RUNS, VALUE_DRAIN, collect  # noqa: E402  (the sweeps read into docs/mechanism/runs)

HERE = Path(__file__).resolve().parent
FIGURE = HERE / "sink_per_seed.png"
TEXTS = ("stdlib", "tinyshakespeare")  # data.source: null (the stdlib) or a file, named by its stem
WITH_BOS = ("", "others_", "differential_")  # the sweeps with BOS, per text: <prefix><text sweep>
TEXT_SWEEP = {"stdlib": "stdlib", "tinyshakespeare": "shakespeare"}
REPLICATION = ["stdlib", "shakespeare", "others_stdlib", "others_shakespeare", "differential_stdlib",
               "differential_shakespeare", "nobos_stdlib", "nobos_shakespeare"]  # replication.sh's sweeps, in order
BISTABLE = ["softmax", "attn_bias", "softmax1", "sink", "explicit_scale", "gated_g1"]  # 10 seeds each
ORDER = BISTABLE[:1] + ["v_bias", "ca_bias"] + BISTABLE[1:] + ["gated", "sigmoid", "clipped_softmax", "softpick",
                                                               "scalable_softmax", "differential", "relu"]
SINK_RATE = "outliers/domain/dormant/sink_rate"
# The tables' columns: (key, heading). A key of the summary, or LAST + a metrics.csv curve.
MAIN = [("convergence/final_val_loss", "final val loss"), ("outliers/act/top1_over_median/max", "top1/median"),
        ("outliers/domain/dormant/first_token_share", "first-token share (dormant)"),
        (SINK_RATE, "seeds with a dormant sink [95% CI]"),
        ("outliers/domain/active/excess_loss", "excess loss (active)"),
        ("outliers/domain/dormant/excess_loss", "excess loss (dormant)"),
        (LAST + VALUE_DRAIN, "value drain ‖v₀‖/median"), ("compress/w8a8/ppl_ratio", "W8A8 ppl ratio")]
NOBOS = [("convergence/final_val_loss", "final val loss"), ("outliers/act/top1_over_median/max", "top1/median"),
         ("outliers/domain/dormant/first_token_share", "first-token share (dormant)"),
         ("outliers/domain/dormant/null_mass", "null mass (dormant)"),
         (LAST + "outliers/attn/outlier_keys", "attention-outlier keys"), (SINK_RATE, "seeds with a dormant sink [95% CI]")]


def sgd_lr_table() -> str:
    """The SGD learning-rate search on softmax, seed 0 (descriptive: one run per lr)."""
    runs = pd.read_csv(RUNS / "sgd_lr.csv").to_dict("records")
    for run in runs:
        run["lr"] = json.loads(run["overrides"])["optim.lr"]
    lines = ["| SGD lr (min_lr 0.003) | final val loss | first-token share (dormant) |", "|---|---|---|"]
    for run in sorted(runs, key=lambda r: float(r["lr"])):
        lines.append(f"| {run['lr']} | {run['convergence/final_val_loss']:.3f} "
                     f"| {run['outliers/domain/dormant/first_token_share']:.2f} |")
    return "\n".join(lines)


def cost_table() -> str:
    costs = pd.read_csv(RUNS / "costs.csv").set_index("sweep")
    costs = costs.loc[[name for name in REPLICATION if name in costs.index]].reset_index()
    lines = ["| sweep | jobs | complete | wall time | training per job (mean) |", "|---|---|---|---|---|"]
    for row in costs.itertuples():
        lines.append(f"| {row.sweep} | {row.jobs} | {row.complete} | {row.wall_s // 60} min {row.wall_s % 60} s "
                     f"| {row.train_s_mean:.0f} s |")
    wall = int(costs.wall_s.sum())
    return "\n".join(lines + [f"| all | {costs.jobs.sum()} | {costs.complete.sum()} | {wall // 60} min {wall % 60} s | |"])


def text_of(run: Run) -> str:
    source = run.overrides.get("data.source")
    return "stdlib" if source in (None, "null") else Path(source).stem


def load(sweeps: list[str]) -> list[Run]:
    """The runs of these sweeps' CSVs, each with its text as the only override that groups it
    (and model.n_head, which differential sets); the last values of curves join the summary."""
    runs = []
    for sweep in sweeps:
        path = RUNS / f"{sweep}.csv"
        frame = pd.read_csv(path)
        for run, row in zip(read_runs_csv(path), frame.to_dict("records")):
            run.summary.update({key: row[key] for key in row if key.startswith(LAST) and pd.notna(row[key])})
            run.overrides = {"text": text_of(run), **{k: v for k, v in run.overrides.items() if k == "model.n_head"}}
            runs.append(run)
    return runs


# --- tables ------------------------------------------------------------------------------

def columns(spec: list[tuple[str, str]]) -> list[Column]:
    """Columns with each key's declared yes/no rule (the sink rate's > 0.5)."""
    rules = {m.key: m.binary_above for m in column_metrics({key for key, _ in spec})}
    return [Column(key, header, binary_above=rules.get(key)) for key, header in spec]


def text(group: Group) -> str:
    return group.runs[0].overrides["text"]


def ordered(groups: list[Group]) -> list[Group]:
    return sorted(groups, key=lambda g: (ORDER.index(g.variant), TEXTS.index(text(g))))


def label(group: Group) -> str:
    return group.variant + (" (2 maps)" if dict(group.setting).get("model.n_head") else "")


def variant_table(sweeps: list[str], spec: list[tuple[str, str]]) -> str:
    """One row per variant and text: the cells of spec, each tested against softmax on the same text."""
    groups = ordered(group_runs(load(sweeps), "softmax"))
    cols = columns(spec)
    cells = cells_against(groups, cols, lambda g: baseline_for(g, groups, "softmax"))
    lines = ["| variant | text | runs | " + " | ".join(h for _, h in spec) + " |", "|" + "---|" * (3 + len(spec))]
    for g in groups:
        lines.append(f"| {label(g)} | {text(g)} | {len(g.complete)} | "
                     + " | ".join(shown(cells[g.label, c.key]) for c in cols) + " |")
    return "\n".join(lines + ["", family(cells, "each variant against softmax on the same text")])


def sweeps_with_bos() -> list[str]:
    return [prefix + TEXT_SWEEP[text] for text in TEXTS for prefix in WITH_BOS]


def main_table() -> str:
    return variant_table(sweeps_with_bos(), MAIN)


def nobos_table() -> str:
    return variant_table([f"nobos_{TEXT_SWEEP[source]}" for source in TEXTS], NOBOS)


def sink_probability_table() -> str:
    """The bistable variants: the seeds that form a dormant sink, per text, each text's count
    against softmax's and the two texts against each other (Fisher, one Holm family)."""
    groups = [g for g in group_runs(load([TEXT_SWEEP[t] for t in TEXTS]), "softmax")]
    col = columns([(SINK_RATE, "sink")])[0]
    by = {(g.variant, text(g)): g for g in groups}
    cells = {(g.label, col.key): make_cell(g, col) for g in groups}
    between: dict[str, Comparison] = {}
    for variant in BISTABLE:
        first, second = (cells[by[variant, t].label, col.key] for t in TEXTS)
        between[variant] = compare(col, second, first)
        for source in TEXTS:
            if variant != "softmax":
                cell = cells[by[variant, source].label, col.key]
                cell.comparison = compare(col, cell, cells[by["softmax", source].label, col.key])
    correct([c.comparison for c in cells.values() if c.comparison is not None] + list(between.values()))

    def p(c: Comparison) -> str:
        return "—" if c is None else f"{c.p:.2g} ({min(c.p_holm, 1):.2g}){STAR * len(c.mark)}"

    heads = [f"{t}: seeds with a sink [95% CI]" for t in TEXTS] + [f"{t}: against softmax, p (Holm)" for t in TEXTS]
    lines = ["| variant | " + " | ".join(heads) + " | the texts against each other, p (Holm) "
             "| both texts: seeds with a sink [95% CI] |", "|" + "---|" * 7]
    for variant in BISTABLE:
        texts = [cells[by[variant, t].label, col.key] for t in TEXTS]
        both = Cell([v for c in texts for v in c.values], sum(c.expected for c in texts), binary_above=col.binary_above)
        lines.append(f"| {variant} | " + " | ".join(format_cell(c) for c in texts) + " | "
                     + " | ".join(p(c.comparison) for c in texts) + f" | {p(between[variant])} | {format_cell(both)} |")
    n = sum(c.comparison is not None for c in cells.values()) + len(between)
    return "\n".join(lines + ["", f"A seed forms a sink when its dormant sink rate exceeds 0.5. Fisher's exact "
                              f"test; Holm's family: these {n} comparisons; \\* / \\*\\*: Holm-corrected p < 0.05 / 0.01."])


# What each head does on each domain: (variant, what, key with {domain}), the key in the summary
# or, with LAST, the last probe's value of a curve. A slot variant's null mass is its slot's weight.
HEADS = [("explicit_scale", "S(x)", LAST + "outliers/domain/{domain}/scale/layer_0"),
         ("gated", "gate", LAST + "outliers/domain/{domain}/gate/layer_0"),
         ("gated_g1", "gate (mean over channels)", LAST + "outliers/domain/{domain}/gate/layer_0"),
         ("attn_bias", "weight of its slot", "outliers/domain/{domain}/null_mass"),
         ("softmax1", "weight of its slot", "outliers/domain/{domain}/null_mass"),
         ("sink", "weight of its slot", "outliers/domain/{domain}/null_mass"),
         ("sigmoid", "weight given to nothing (null mass)", "outliers/domain/{domain}/null_mass")]


def heads_table() -> str:
    """Descriptive (no test): the variants' own per-query values on active and dormant queries."""
    groups = ordered(group_runs(load(sweeps_with_bos()), "softmax"))
    lines = ["| variant | what | text | runs | active queries | dormant queries |", "|---|---|---|---|---|---|"]
    for variant, what, key in HEADS:
        for g in (g for g in groups if g.variant == variant):
            parts = [format_cell(Cell(g.values(key.format(domain=d)), len(g.complete))) for d in ("active", "dormant")]
            lines.append(f"| {variant} | {what} | {text(g)} | {len(g.complete)} | " + " | ".join(parts) + " |")
    return "\n".join(lines)


TABLES = {"cost": cost_table, "sgd_lr": sgd_lr_table, "sink_probability": sink_probability_table, "main": main_table, "heads": heads_table,
          "nobos": nobos_table}


def tables() -> dict[str, str]:
    """Every table of the doc that exists in the committed CSVs, by name."""
    return {name: make() for name, make in TABLES.items()}


# --- the figure --------------------------------------------------------------------------

def per_seed_figure(path: Path = FIGURE):
    """The dormant first-token share of every seed over training, per bistable variant and text."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from outlier_lab import figure_style

    curves = pd.read_csv(RUNS / "curves.csv")
    fig, axes = plt.subplots(len(TEXTS), len(BISTABLE), figsize=(2.6 * len(BISTABLE), 2.4 * len(TEXTS)),
                             sharex=True, sharey=True, squeeze=False)
    key = CURVES[0]
    for row, text in enumerate(TEXTS):
        for col, variant in enumerate(BISTABLE):
            ax = axes[row][col]
            runs = curves[(curves.sweep == TEXT_SWEEP[text]) & (curves.variant == variant)]
            for seed, run in runs.groupby("seed"):
                ax.plot(run.step, run[key], lw=0.9, alpha=0.8, label=f"seed {seed}")
            ax.set_title(f"{variant}, {text}", fontsize=9)
            ax.set_ylim(-0.02, 1.02)
            if col == 0:
                ax.set_ylabel("first-token share\n(dormant queries)")
            if row == len(TEXTS) - 1:
                ax.set_xlabel("step")
    fig.tight_layout()
    figure_style.save(fig, path)
    return fig


def main(argv: list[str]) -> None:
    if argv[:1] == ["collect"]:
        collect([Path(a) for a in argv[1:]])
        return
    for name, table in tables().items():
        print(f"## {name}\n\n{table}\n")
    per_seed_figure()
    print(f"figure: {FIGURE.relative_to(ROOT)}")


if __name__ == "__main__":
    main(sys.argv[1:])
