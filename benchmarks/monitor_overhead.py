"""What the outlier and convergence monitors cost a run of the default config, measured side
by side: the same short run (`python train.py` with compression off and the CSV logger) with
the monitors and without them, wall times compared.

The short run keeps the default's probes per step: the default (2,500 steps, a probe every
150, plus one at the start and one at the end) probes 18 times, 1 per 139 steps; a run of
`--steps` steps gets the cadence whose probe count per step is closest to that (416 steps,
a probe every 208: at 0, 208 and 416). Everything else is the default config (validation
every 250 steps, checkpoints, the end-of-run plots), the rich progress bar off in both.

Noise: the runs are interleaved ABBA (without, with, with, without) so that a linear drift of
the machine's speed cancels within a block; each block gives one ratio (sum of its two runs
with over its two without), and the headline is the median over `--blocks` blocks. A 3-step
run first warms the caches (tokenized corpus, imports, allocator). The load average at the
start is printed: above ~0.5 another job shares the cores and every time stretches by a
factor that changes during the run, so run it alone; the process CPU times are printed as
a cross-check that another job moves less than wall time.

Breakdown (printed above the headline): every monitor hook of the runs with monitors is
timed as it runs (a probe, `_measure`; the end-of-run plots, `_plot`; the other hooks per
step), and the default run's share is projected from them: (probes x probe + plots + steps x
per-step) / (steps x bare step). The short run carries the one-off end-of-run plots, which a
2,500-step run spreads over 6x more steps, so the measured share of the short run lies above
the default run's by about plots / (2,500 x step); the projection line says by how much.

    python benchmarks/monitor_overhead.py [--steps 416] [--blocks 1]

Last line: monitor_overhead=<measured (wall with monitors) / (wall without) - 1 of the short
run, the median over ABBA blocks: the share of time the monitors add>
"""

from __future__ import annotations

import argparse
import functools
import os
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


def probes(steps: int, every: int) -> int:
    """How many probes a run of ``steps`` makes with ``every``: the start, every multiple of
    ``every`` up to ``steps``, and the end unless it fell on a multiple (OutlierMonitor)."""
    return 1 + steps // every + (1 if steps % every else 0)


def matched_cadence(steps: int, default_steps: int, default_every: int) -> int:
    """The probe cadence for a run of ``steps`` whose probes per step are closest to the
    default run's (ties: the shorter cadence, so that a probe mid-run is kept)."""
    target = probes(default_steps, default_every) / default_steps
    return min(range(1, steps + 1), key=lambda every: (abs(probes(steps, every) / steps - target), every))


@contextmanager
def timed_monitors(seconds: dict, calls: dict):
    """Every ``on_*`` hook the monitor classes define, and their probe and plot methods, timed."""
    originals = []
    for cls in (OutlierMonitor, ConvergenceMonitor):
        for name in [n for n in vars(cls) if n.startswith("on_")] + [n for n in NESTED if n in vars(cls)]:
            method = vars(cls)[name]

            @functools.wraps(method)
            def timed(*args, _method=method, _name=name, **kwargs):
                probes_before = len(getattr(args[0], "history", ()))
                start = time.perf_counter()
                try:
                    return _method(*args, **kwargs)
                finally:
                    seconds[_name] += time.perf_counter() - start
                    # a _measure call at a step already probed (the end on a multiple) returns at once: no probe
                    probed = _name != "_measure" or len(args[0].history) > probes_before
                    calls[_name] += probed

            originals.append((cls, name, method))
            setattr(cls, name, timed)
    try:
        yield
    finally:
        for cls, name, method in originals:
            setattr(cls, name, method)


def run_seconds(steps: int, every: int, monitors: bool) -> tuple[float, float, float]:
    """The wall and process CPU seconds of a short default run, and its steady step time (steps 10 to the end)."""
    with tempfile.TemporaryDirectory() as tmp:
        extra = ([f"callbacks.outlier_monitor.every_n_steps={every}"] if monitors else
                 ["callbacks.outlier_monitor=null", "callbacks.convergence_monitor=null"])
        cfg = train.compose_config(Path(tmp), "logger=csv", "eval.compression=[]", "callbacks.progress_bar=null",
                                   f"trainer.max_steps={steps}", *extra)
        timer = StepTimer(min(10, steps - 1))
        start, cpu = time.perf_counter(), time.process_time()
        with added_callbacks(timer):
            train.train(cfg)
        return (time.perf_counter() - start, time.process_time() - cpu,
                (timer.end - timer.start) / (steps - timer.warmup))


def block_ratio(without: list[float], with_monitors: list[float]) -> float:
    """One ABBA block's ratio: its runs with monitors over its runs without, summed."""
    return sum(with_monitors) / sum(without)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=416, help="steps of each short run")
    parser.add_argument("--blocks", type=int, default=1, help="ABBA blocks (4 runs each)")
    args = parser.parse_args()
    print(f"load average at the start {os.getloadavg()[0]:.2f} (above ~0.5: another job shares the cores)")
    default = train.compose_config(Path(tempfile.gettempdir()))
    total_steps, every_default = default.trainer.max_steps, default.callbacks.outlier_monitor.every_n_steps
    every = matched_cadence(args.steps, total_steps, every_default)
    n_probes, probes_default = probes(args.steps, every), probes(total_steps, every_default)

    run_seconds(3, every, True)  # warm caches (tokenized corpus, imports, allocator)
    seconds, calls = defaultdict(float), defaultdict(int)
    walls, cpus, ratios, cpu_ratios, steps = {False: [], True: []}, {False: [], True: []}, [], [], []
    for _ in range(args.blocks):
        block = {False: [], True: []}, {False: [], True: []}
        for monitors in (False, True, True, False):
            with timed_monitors(seconds, calls) if monitors else nullcontext():
                wall, cpu, step = run_seconds(args.steps, every, monitors)
            for store, value in ((walls, wall), (cpus, cpu), (block[0], wall), (block[1], cpu)):
                store[monitors].append(value)
            if not monitors:
                steps.append(step)  # the bare training step of the runs without monitors: the projection's divisor
        ratios.append(block_ratio(block[0][False], block[0][True]))
        cpu_ratios.append(block_ratio(block[1][False], block[1][True]))
    runs_with = 2 * args.blocks
    if calls["_measure"] != n_probes * runs_with:  # probes() must be the monitor's own rule
        raise SystemExit(f"the runs probed {calls['_measure']} times, not {n_probes} x {runs_with}: probes() is stale")
    step = statistics.median(steps)
    probe = seconds["_measure"] / calls["_measure"]
    plots = seconds["_plot"] / runs_with
    hooks = (sum(v for k, v in seconds.items() if k not in NESTED) - seconds["_measure"] - seconds["_plot"]) / runs_with
    per_step = hooks / args.steps
    projected = (probes_default * probe + plots + total_steps * per_step) / (total_steps * step)

    print(f"breakdown, timed hooks: probe {probe * 1000:.0f} ms x {n_probes} per short run, plots {plots:.2f} s, "
          f"other hooks {per_step * 1e6:.0f} us/step; bare step {step * 1000:.0f} ms")
    print(f"  projected for the default run ({total_steps} steps, {probes_default} probes): "
          f"({probes_default} x {probe:.3f} s + {plots:.2f} s + {total_steps} x {per_step * 1e3:.3f} ms) / "
          f"({total_steps} x {step:.3f} s) = {projected:.4f}; the plots alone add "
          f"{plots / (args.steps * step) - plots / (total_steps * step):.4f} more to a {args.steps}-step run")
    print(f"  extra seconds of a short run: the timed hooks {n_probes * probe + plots + hooks:.2f} s, "
          f"measured {statistics.median(walls[True]) - statistics.median(walls[False]):.2f} s")
    print(f"measured: {args.steps}-step runs, a probe every {every} ({n_probes} probes, the default's "
          f"{probes_default / total_steps * args.steps:.2f} per {args.steps} steps), {args.blocks} ABBA block(s)")
    print(f"  wall without {[round(x, 1) for x in walls[False]]} s, with {[round(x, 1) for x in walls[True]]} s; "
          f"with/without per block {[round(r, 4) for r in ratios]}")
    print(f"  process CPU without {[round(x, 1) for x in cpus[False]]} s, with {[round(x, 1) for x in cpus[True]]} s; "
          f"with/without per block {[round(r, 4) for r in cpu_ratios]}")
    print(f"monitor_overhead={statistics.median(ratios) - 1:.4f}")


if __name__ == "__main__":
    main()
