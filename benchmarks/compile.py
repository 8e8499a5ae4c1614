"""Training tokens/s with compile=true against eager, for every attention variant.

The step is what train.py runs: the loss (through models.compile.CompiledLoss with compile,
GPT.loss without), backward, gradient clipping and AdamW, on random tokens of the model's
context and the default batch size. Each (size, variant) builds one model, times eager and
compiled steps alternately (after the compiled warm-up, which includes compilation, shown as
its own column) and keeps the median step of each.

    python benchmarks/compile.py [--sizes nano small] [--variants softmax explicit_scale] [--device cuda]

Last line: min_compiled_over_eager=<the smallest compiled/eager tokens/s ratio of the runs that
compiled; a run that fell back to eager is listed and left out, NaN when none compiled>
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: runs from any working directory

from outlier_lab.models.attention import registered_names  # noqa: E402
from outlier_lab.models.compile import CompiledLoss  # noqa: E402
from outlier_lab.models.gpt import GPT  # noqa: E402

SIZES = {"nano": dict(n_layer=4, n_head=4, n_embd=128), "small": dict(n_layer=6, n_head=6, n_embd=384),
         "tiny": dict(n_layer=1, n_head=2, n_embd=32)}  # tiny: for --cpu-smoke runs of this code
BLOCK, BATCH, VOCAB = 256, 16, 256


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def measure(size: str, variant: str, device: str, steps: int, block: int = BLOCK, batch: int = BATCH,
            autocast: bool = False) -> dict[str, float]:
    """Median step seconds of eager and compiled training, and the compiled warm-up seconds."""
    torch.manual_seed(0)
    model = GPT(vocab_size=VOCAB, block_size=block, attention={"name": variant}, **SIZES[size]).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device == "cuda")
    compiled = CompiledLoss(model, f"attention={variant}")
    x, y = (torch.randint(0, VOCAB, (batch, block), device=device) for _ in range(2))

    def step(loss_fn) -> float:
        synchronize(device)
        start = time.perf_counter()
        with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
            loss = loss_fn(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()
        synchronize(device)
        return time.perf_counter() - start

    warmup = sum(step(compiled) for _ in range(2))  # compilation (forward and backward graphs)
    step(model.loss)
    times = {"eager": [], "compiled": []}
    for _ in range(steps):
        times["eager"].append(step(model.loss))
        times["compiled"].append(step(compiled))
    return {"eager": statistics.median(times["eager"]), "compiled": statistics.median(times["compiled"]),
            "warmup": warmup, "fell_back": compiled.compiled is None}


def table(sizes, variants, device, steps, **kwargs) -> float:
    """Print the table; return the smallest compiled/eager tokens/s ratio among the runs that
    really compiled (NaN when none did): a run that fell back to eager times eager twice, and
    its ratio of about 1 would say nothing about compilation."""
    worst, fell_back = float("inf"), []
    print(f"{'size':6} {'variant':16} {'eager tok/s':>12} {'compiled':>12} {'ratio':>6} {'compile s':>9}")
    for size in sizes:
        for variant in variants:
            r = measure(size, variant, device, steps, **kwargs)
            tokens = kwargs.get("batch", BATCH) * kwargs.get("block", BLOCK)
            ratio = r["eager"] / r["compiled"]
            if r["fell_back"]:
                fell_back.append(f"{size}/{variant}")
            else:
                worst = min(worst, ratio)
            note = "  (fell back to eager: not in the headline)" if r["fell_back"] else ""
            print(f"{size:6} {variant:16} {tokens / r['eager']:12.0f} {tokens / r['compiled']:12.0f} "
                  f"{ratio:6.2f} {r['warmup']:9.1f}{note}", flush=True)
    if fell_back:
        print(f"fell back to eager, left out of the headline: {', '.join(fell_back)}")
    return worst if worst < float("inf") else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["nano", "small"], choices=sorted(SIZES))
    parser.add_argument("--variants", nargs="+", default=registered_names(), choices=registered_names())
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=5, help="timed steps of each mode")
    args = parser.parse_args()
    worst = table(args.sizes, args.variants, args.device, args.steps, autocast=args.device == "cuda")
    print(f"min_compiled_over_eager={worst:.3f}")


if __name__ == "__main__":
    main()
