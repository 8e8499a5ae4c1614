"""The collection step of docs/mechanism.md's study: the sweeps of replication.sh (and the SGD
learning-rate search) read once from their run directories into what the page is computed
from, committed in docs/mechanism/runs/: one per-run CSV per sweep (the report's
``--runs-csv`` format), the curves of the per-seed figure and each sweep's cost; and the
attention maps the page shows, copied as the monitor drew them.

    python docs/mechanism/collect_runs.py outputs/sweeps/replication outputs/sweeps/replication_extra
    (the same as: python docs/mechanism/mechanism_study.py collect ROOT...)
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from outlier_lab.report.load import load_runs  # noqa: E402
from outlier_lab.report.run_table import sweep_cost, write_runs_csv  # noqa: E402

HERE = Path(__file__).resolve().parent
RUNS = HERE / "runs"
# the last probe's values kept per run: value drain, residual peak, and every per-domain value
# of the one layer (the variants' own per-query values among them: S(x), the gates)
VALUE_DRAIN = "outliers/attn/value_drain/layer_0"
LAST_CURVES = [VALUE_DRAIN, "outliers/act/residual_peak/layer_0", "outliers/domain/*/layer_0",
               "outliers/attn/outlier_keys*"]
CURVES = ["outliers/domain/dormant/first_token_share", "outliers/domain/dormant/sink_rate"]
# The attention maps shown in the page, as the monitor drew them at the end of a run:
# (sweep, variant, seed) -> the page's PNG
MAPS = {("stdlib", "softmax", 0): "attention_softmax_s0.png",
        ("stdlib", "explicit_scale", 0): "attention_explicit_scale_s0.png",
        ("shakespeare", "explicit_scale", 1): "attention_explicit_scale_tinyshakespeare_s1.png",
        ("nobos_stdlib", "softmax", 0): "attention_softmax_nobos_s0.png"}


def collect(roots: list[Path]) -> None:
    """The per-run CSV of every sweep under the roots (replication.sh's, and the SGD lr search's),
    the curves of the figure (one row per run and probe step) and each sweep's cost."""
    curves, costs = [], []
    for sweep in sorted((p for root in roots for p in root.iterdir() if p.is_dir()), key=lambda p: p.name):
        runs = load_runs([sweep])
        print(f"{sweep.name}: {len(runs)} runs, {sum(r.complete for r in runs)} complete")
        write_runs_csv(runs, RUNS / f"{sweep.name}.csv", LAST_CURVES)
        costs.append(sweep_cost(sweep, runs))
        for run in runs:
            if (name := MAPS.get((sweep.name, run.variant, run.seed))) is not None:
                shutil.copyfile(run.path / "plots" / "attention_maps.png", HERE / name)
        for run in runs:
            steps = sorted({int(s) for key in CURVES if key in run.curves for s in run.curves[key][0]})
            frame = pd.DataFrame({"sweep": sweep.name, "variant": run.variant, "seed": run.seed, "step": steps})
            for key in CURVES:
                if key in run.curves:
                    frame[key] = pd.Series(run.curves[key][1], index=run.curves[key][0].astype(int)).reindex(steps).values
            curves.append(frame)
    pd.concat(curves).to_csv(RUNS / "curves.csv", index=False, float_format="%.6g")
    pd.DataFrame(costs).to_csv(RUNS / "costs.csv", index=False)


if __name__ == "__main__":
    collect([Path(a) for a in sys.argv[1:]])
