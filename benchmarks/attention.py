"""Forward+backward time of every attention variant's fastest path, as a ratio to softmax.

Times, on CPU at the `nano` and `small` sizes, batch 16, context 256, fp32: the attention
module alone (QKV projection, the variant, output projection), the stricter measure, and
the whole GPT's training step (forward, loss, backward), the cost a user pays. Variants are timed in
interleaved rounds (every variant once per round) and the median is used, so drift of a
noisy machine hits all of them alike; the load average at the start is printed, because
another job on the cores still moves the ratios (softpick at nano read 3.2x softmax beside
another job, 1.9x alone): run it alone. Memory is the activation memory that autograd saves
for the backward pass (CPU has no allocator peak counter), a deterministic stand-in for
the peak.

Then the same compiled (torch.compile of the module and of the model's loss, as compile=true
trains), and each variant on its faster path against softmax on its own faster path.

    python benchmarks/attention.py [--sizes nano small] [--rounds 7] [--no-compile]

Before it, worst_eager_variant_over_softmax=<the same over the eager table>: what a CPU user
gets by default (compile=auto trains eager on CPU).
Last line: worst_variant_over_softmax=<the largest ratio to softmax, module or whole model, of
the faster paths (of the eager table with --no-compile)>
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from outlier_lab.models.attention import build_attention, registered_names  # noqa: E402
from outlier_lab.models.compile import quiet_lru_cache_notice  # noqa: E402
from outlier_lab.models.gpt import GPT  # noqa: E402

SIZES = {"nano": (128, 4), "small": (384, 6)}  # n_embd, n_head
FAMILY_TARGET = {"slot": 1.5, "elementwise": 2.5, "softmax": 1.10}


def saved_bytes(forward) -> int:
    """Bytes that autograd saves for the backward of ``forward()``: CPU's stand-in for a peak."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        forward()
    return total


def step(module, x) -> None:
    module(x).sum().backward()


def interleaved_medians(steps: dict, rounds: int) -> dict[str, float]:
    for fn in steps.values():
        fn()  # warm-up
    times = {name: [] for name in steps}
    for _ in range(rounds):
        for name, fn in steps.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def bench(size: str, rounds: int, batch: int, seq: int, compiled: bool = False) -> dict[str, tuple[float, int, str, float]]:
    """name -> (module seconds, saved bytes, family, model seconds); ``compiled``: the module
    and the model's loss through torch.compile (compile=true), compiled in the warm-up."""
    n_embd, n_head = SIZES[size]
    torch.manual_seed(0)
    modules = {name: build_attention(name, n_embd=n_embd, n_head=n_head, block_size=seq) for name in registered_names()}
    x = torch.randn(batch, seq, n_embd, requires_grad=True)
    if compiled:  # every variant's module and model stay compiled at once (interleaved timing), and
        # dynamo caches per code object (the shared forward and GPT.loss): room for all of them
        torch._dynamo.config.recompile_limit = 4 * len(modules)
        quiet_lru_cache_notice()
    run = {name: torch.compile(m) if compiled else m for name, m in modules.items()}
    module_t = interleaved_medians({n: functools.partial(step, m, x) for n, m in run.items()}, rounds)
    idx = torch.randint(0, 256, (batch, seq))
    models = {name: GPT(block_size=seq, n_layer=4 if size == "nano" else 6, n_head=n_head, n_embd=n_embd,
                        attention={"name": name}) for name in modules}
    losses = {name: torch.compile(m.loss) if compiled else m.loss for name, m in models.items()}
    model_t = interleaved_medians({n: functools.partial(lambda loss: loss(idx, idx).backward(), f)
                                   for n, f in losses.items()}, max(3, rounds // 2))
    return {name: (module_t[name], saved_bytes(lambda: m(x).sum()), m.family, model_t[name]) for name, m in modules.items()}


def print_table(title: str, results: dict, targets: bool) -> None:
    base_t, base_m, _, base_model = results["softmax"]
    print(f"\n{title}")
    print(f"{'variant':<17}{'path':<12}{'module ms':>10}{'x softmax':>10}{'target':>7}{'saved MB':>9}"
          f"{'x softmax':>10}{'model ms':>10}{'x softmax':>10}")
    for name, (t, mem, fam, model) in sorted(results.items(), key=lambda kv: kv[1][0]):
        ratio = t / base_t
        flag = "" if not targets or ratio <= FAMILY_TARGET[fam] else "  over target"
        print(f"{name:<17}{fam:<12}{t * 1e3:>10.1f}{ratio:>10.2f}{FAMILY_TARGET[fam]:>7.2f}{mem / 2**20:>9.1f}"
              f"{mem / base_m:>10.2f}{model * 1e3:>10.0f}{model / base_model:>10.2f}{flag}")


def fastest(eager: dict, compiled: dict) -> dict:
    """Each variant on its faster path (eager or compiled), module and model separately."""
    return {name: (min(e[0], compiled[name][0]), e[1], e[2], min(e[3], compiled[name][3]))
            for name, e in eager.items()}


def worst_ratio(results: dict) -> float:
    """The largest ratio to softmax of any variant, module or whole model."""
    base_t, base_model = results["softmax"][0], results["softmax"][3]
    return max(max(t / base_t, model / base_model) for t, _, _, model in results.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--no-compile", action="store_true", help="the eager table only")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, context {args.seq}, fp32, "
          f"load average {os.getloadavg()[0]:.2f} (above ~0.5: another job shares the cores)")
    worst = worst_eager = 0.0
    for size in args.sizes:
        label = f"{size} (n_embd={SIZES[size][0]}, n_head={SIZES[size][1]})"
        best = eager = bench(size, args.rounds, args.batch, args.seq)
        print_table(f"{label}, eager", eager, targets=True)
        worst_eager = max(worst_eager, worst_ratio(eager))
        if not args.no_compile:
            compiled = bench(size, args.rounds, args.batch, args.seq, compiled=True)
            print_table(f"{label}, compiled (compile=true)", compiled, targets=False)
            best = fastest(eager, compiled)
            print_table(f"{label}, each variant and softmax on its faster path", best, targets=False)
        worst = max(worst, worst_ratio(best))
    print(f"worst_eager_variant_over_softmax={worst_eager:.3f}")
    print(f"worst_variant_over_softmax={worst:.3f}")


if __name__ == "__main__":
    main()
