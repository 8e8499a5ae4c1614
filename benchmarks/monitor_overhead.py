"""Training wall time of the default `nano` run (`python train.py`, 2,500 steps) with the
outlier and convergence monitors at their default settings, against the same run without
them, side by side (alternating); compression is off in both.

    python benchmarks/monitor_overhead.py [--steps N] [--repeats 1]

A shorter --steps overstates the overhead: the probes at the first and last step and the
end-of-run plots are fixed costs. Last line: monitor_overhead=<(with - without) / without>
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: runs from any working directory

import train  # noqa: E402


def run_seconds(steps: int, monitors: bool) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        extra = [] if monitors else ["callbacks.outlier_monitor=null", "callbacks.convergence_monitor=null"]
        steps_override = [f"trainer.max_steps={steps}"] if steps else []
        cfg = train.compose_config(Path(tmp), "logger=csv", "eval.compression=[]", *steps_override, *extra)
        start = time.perf_counter()
        train.train(cfg)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="default: the config's trainer.max_steps")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    run_seconds(5, True)  # warm caches (tokenized corpus, imports)
    with_m, without = [], []
    for _ in range(args.repeats):
        without.append(run_seconds(args.steps, False))
        with_m.append(run_seconds(args.steps, True))
    w, wo = statistics.median(with_m), statistics.median(without)
    print(f"nano, {args.steps or 'default'} steps: without monitors {wo:.1f} s {[round(x, 1) for x in without]}, "
          f"with {w:.1f} s {[round(x, 1) for x in with_m]}")
    print(f"monitor_overhead={(w - wo) / wo:.4f}")


if __name__ == "__main__":
    main()
