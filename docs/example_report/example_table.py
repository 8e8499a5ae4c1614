"""The example table of docs/sweeps.md: the report's table of the four runs in runs.csv.

    python train.py -m attention=softmax,explicit_scale seed=0,1 trainer.max_steps=400 \\
        trainer.val_check_interval=100 optim.lr=3e-3 hydra.sweep.dir=outputs/sweeps/example
    python -m outlier_lab.report outputs/sweeps/example --out docs/example_report --runs-csv docs/example_report/runs.csv
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from outlier_lab.report.render import markdown_table  # noqa: E402
from outlier_lab.report.run_table import read_runs_csv  # noqa: E402
from outlier_lab.report.table import build_table, group_runs  # noqa: E402

CSV = Path(__file__).resolve().parent / "runs.csv"


def tables() -> dict[str, str]:
    return {"example": markdown_table(build_table(group_runs(read_runs_csv(CSV), "softmax"), "softmax"))}


if __name__ == "__main__":
    print(tables()["example"])
