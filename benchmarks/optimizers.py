"""Step time of each optimizer of configs/optim/ against AdamW, on CPU.

One training step of the model that train.py builds (forward, backward, gradient clipping,
the optimizer step and the LR schedule), with the optimizer LitGPT.configure_optimizers
builds from ``optim=NAME``, on random token batches of the config's size, at model=nano and
model=small. Every optimizer is warmed up first (first touches; OrthoAdam draws its
rotations, Muon allocates its buffers) and those steps are not timed. Then rounds: each round
times every optimizer in turn, so that a change of load on the machine hits them alike; the
median over rounds is used.

    python benchmarks/optimizers.py [--models nano small] [--repeats 2]     # ~3 minutes on 2 cores

Columns: ms per step, and in brackets the ratio to AdamW's; "opt ms": the optimizer step
alone. Last line: worst_optimizer_over_adamw=<max over models and optimizers of the ratio>
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import hydra
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: runs from any working directory

import train  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OPTIMS = sorted(p.stem for p in (ROOT / "configs" / "optim").glob("*.yaml"))  # every option, adamw among them
# (warm-up steps, timed steps per round); few at model=small: torch's Muon orthogonalizes in
# bfloat16, which CPUs without native bf16 (AVX2) emulate, ~40 s a step there on 2 cores
STEPS = {"nano": (2, 5), "small": (1, 1)}


class Run:
    """A model, its optimizer and schedule as LitGPT builds them, and one fixed batch."""

    def __init__(self, model: str, optim: str):
        with tempfile.TemporaryDirectory() as tmp:
            cfg = train.compose_config(tmp, f"model={model}", f"optim={optim}", "optim.decay_steps=1000")
        torch.manual_seed(0)
        self.module = hydra.utils.instantiate(cfg.module, model={"vocab_size": 256})
        conf = self.module.configure_optimizers()
        self.optimizer, self.scheduler = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
        tokens = torch.randint(0, 256, (cfg.data.batch_size, cfg.model.block_size + 1))
        self.x, self.y = tokens[:, :-1], tokens[:, 1:]
        self.module.model.train()

    def steps(self, n: int) -> tuple[float, float]:
        """Seconds per step: the whole step, and the optimizer step alone."""
        total = opt = 0.0
        for _ in range(n):
            start = time.perf_counter()
            loss = self.module.model.loss(self.x, self.y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.module.model.parameters(), 1.0)
            before = time.perf_counter()
            self.optimizer.step()
            opt += time.perf_counter() - before
            self.optimizer.zero_grad(set_to_none=True)
            self.scheduler.step()
            loss.item()
            total += time.perf_counter() - start
        return total / n, opt / n


def measure(model: str, repeats: int) -> dict[str, tuple[float, float]]:
    """{optimizer: (median seconds per step, median seconds per optimizer step)}."""
    warmup, timed = STEPS[model]
    runs = {name: Run(model, name) for name in OPTIMS}
    for run in runs.values():
        run.steps(warmup)
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in OPTIMS}
    for _ in range(repeats):
        for name, run in runs.items():
            times[name].append(run.steps(timed))
    return {name: (statistics.median(t for t, _ in ts), statistics.median(o for _, o in ts)) for name, ts in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["nano", "small"], choices=sorted(STEPS))
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; ms per training step "
          f"(ratio to adamw); opt ms: the optimizer step alone")
    header = f"{'model':<7}" + "".join(f"{name + ' ms':>22}{'opt ms':>8}" for name in OPTIMS)
    print(header)
    worst = 0.0
    for model in args.models:
        result = measure(model, args.repeats)
        base = result["adamw"][0]
        cells = []
        for name in OPTIMS:
            step, opt = result[name]
            worst = max(worst, step / base)
            cells.append(f"{step * 1e3:>14.1f} ({step / base:5.2f}){opt * 1e3:>8.1f}")
        print(f"{model:<7}" + "".join(cells))
    print(f"worst_optimizer_over_adamw={worst:.3f}")


if __name__ == "__main__":
    main()
