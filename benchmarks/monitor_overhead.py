"""What the outlier and convergence monitors cost the default run (`python train.py`: nano,
2,500 steps, a probe every 150), measured in under 3 minutes instead of two full runs.

Short runs of the default config (compression off, CSV logger), without the monitors and
with them in ABBA order, every monitor hook of the runs with them timed as it runs:
  - the step time comes from the run without monitors;
  - the probe time (one `_measure`: probe forward, metrics, logging), the end-of-run plots
    and the rest of the hooks per step come from the timed run;
  - the default run's share is then (probes x probe + plots + steps x per-step) /
    (steps x step), with the probe count of the default cadence.
The check: the timed costs predict a short run's extra seconds over one without monitors;
both are printed (the measured difference of short runs is the noisier).

    python benchmarks/monitor_overhead.py [--steps 200] [--repeats 2]

Last line: monitor_overhead=<the derived share for the default run>
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager, nullcontext
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: runs from any working directory

import train  # noqa: E402
from benchmarks.throughput import StepTimer, added_callbacks  # noqa: E402
from outlier_lab.monitor import ConvergenceMonitor, OutlierMonitor  # noqa: E402

NESTED = ("_measure", "_plot")  # called from inside the hooks: timed separately, subtracted from them


@contextmanager
def timed_monitors(seconds: dict, calls: dict):
    """Every ``on_*`` hook the monitor classes define, and their probe and plot methods, timed."""
    originals = []
    for cls in (OutlierMonitor, ConvergenceMonitor):
        for name in [n for n in vars(cls) if n.startswith("on_")] + [n for n in NESTED if n in vars(cls)]:
            method = vars(cls)[name]

            @functools.wraps(method)
            def timed(*args, _method=method, _name=name, **kwargs):
                start = time.perf_counter()
                try:
                    return _method(*args, **kwargs)
                finally:
                    seconds[_name] += time.perf_counter() - start
                    calls[_name] += 1

            originals.append((cls, name, method))
            setattr(cls, name, timed)
    try:
        yield
    finally:
        for cls, name, method in originals:
            setattr(cls, name, method)


def run_seconds(steps: int, monitors: bool) -> tuple[float, float]:
    """The wall time of a short default run, and its steady step time (steps 10 to the end)."""
    with tempfile.TemporaryDirectory() as tmp:
        extra = [] if monitors else ["callbacks.outlier_monitor=null", "callbacks.convergence_monitor=null"]
        cfg = train.compose_config(Path(tmp), "logger=csv", "eval.compression=[]", "callbacks.progress_bar=null",
                                   f"trainer.max_steps={steps}", *extra)
        timer = StepTimer(min(10, steps - 1))
        start = time.perf_counter()
        with added_callbacks(timer):
            train.train(cfg)
        return time.perf_counter() - start, (timer.end - timer.start) / (steps - timer.warmup)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="steps of each short run")
    parser.add_argument("--repeats", type=int, default=2, help="pairs of short runs, in ABBA order")
    args = parser.parse_args()
    default = train.compose_config(Path(tempfile.gettempdir()))
    total_steps, every = default.trainer.max_steps, default.callbacks.outlier_monitor.every_n_steps

    run_seconds(3, True)  # warm caches (tokenized corpus, imports, allocator)
    seconds, calls = defaultdict(float), defaultdict(int)
    walls = {False: [], True: []}
    steps = []  # the bare training step of the runs without monitors: the smallest divisor
    for pair in range(args.repeats):
        for monitors in ((False, True) if pair % 2 == 0 else (True, False)):
            with timed_monitors(seconds, calls) if monitors else nullcontext():
                wall, step = run_seconds(args.steps, monitors)
            walls[monitors].append(wall)
            if not monitors:
                steps.append(step)
    step = statistics.median(steps)
    without, with_monitors = statistics.median(walls[False]), statistics.median(walls[True])

    probe = seconds["_measure"] / calls["_measure"]
    plots = seconds["_plot"] / args.repeats
    hooks = (sum(v for k, v in seconds.items() if k not in NESTED) - seconds["_measure"] - seconds["_plot"]) / args.repeats
    per_step = hooks / args.steps
    probes_default = total_steps // every + 2  # every `every` steps, plus the start and the end
    share = (probes_default * probe + plots + total_steps * per_step) / (total_steps * step)

    print(f"short runs of {args.steps} steps, median of {args.repeats}: without monitors {without:.1f} s "
          f"{[round(x, 1) for x in walls[False]]}, with {with_monitors:.1f} s {[round(x, 1) for x in walls[True]]}")
    print(f"  probe {probe * 1000:.0f} ms x {calls['_measure'] // args.repeats}, plots {plots:.2f} s, "
          f"other hooks {per_step * 1e6:.0f} us/step; step {step * 1000:.0f} ms")
    predicted = calls["_measure"] / args.repeats * probe + plots + hooks
    print(f"  extra seconds of a short run: predicted by the timed hooks {predicted:.2f} s, "
          f"measured {with_monitors - without:.2f} s (the difference of short runs: noisy)")
    print(f"default run ({total_steps} steps, probe every {every}: {probes_default} probes): "
          f"{probes_default} x {probe:.3f} s + {plots:.2f} s + {total_steps} x {per_step * 1e3:.2f} ms "
          f"over {total_steps} x {step:.3f} s")
    print(f"monitor_overhead={share:.4f}")


if __name__ == "__main__":
    main()
