"""The prepared check for a CUDA machine, one command, under 8 minutes on one GPU:

  1. tests: tests/test_gpu.py (every variant's backend=auto under bf16 against eager fp32,
     flash-attn and compiled FlexAttention against their references, compiled loss) and
     tests/test_kernels_triton.py (the fused Triton kernels compiled for CUDA, fp32 and bf16,
     against the eager references);
  2. the fused-kernel table (benchmarks/fused_kernels.py): time and peak memory of every fused and
     slot variant against flash/SDPA softmax at T = 1k, 4k, 16k;
  3. a 50-step bf16-mixed training run of every variant on backend=auto (trainer=gpu,
     eager: compiling 14 models would take most of the budget): the loss must be finite
     and fall;
  4. compiled against eager training tokens/s (benchmarks/compile.py) at nano;
  5. model=small, softmax against explicit_scale, 2,000 steps each (compile: auto, i.e. on),
     the same seed: val loss and the outlier headline (top-1/median activation, first-token
     share, sink rate, kurtosis).

``--cpu-smoke`` runs the same code on CPU at tiny sizes (the fused kernels in Triton's
interpreter), for the test suite; its numbers mean nothing.

    python benchmarks/gpu_check.py                # on the GPU machine; record the output in docs/gpu.md
    python benchmarks/gpu_check.py --cpu-smoke

Last line: gpu_check_failed_stages=<how many of the five stages failed>
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

HEADLINE = ("outliers/act/top1_over_median/max", "outliers/attn/first_token_share/max", "outliers/attn/sink_rate",
            "outliers/act/avg_kurtosis")


def python(*args: str, smoke: bool) -> None:
    """A subprocess of this interpreter in the repo root; a non-zero exit fails the stage."""
    env = {**os.environ, **({"TRITON_INTERPRET": "1"} if smoke else {})}
    subprocess.run([sys.executable, *args], cwd=ROOT, env=env, check=True)


def tests(smoke: bool) -> None:
    selection = ["-k", "test_auto_choices or test_every_kernel_has_a_variant"] if smoke else []
    python("-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_gpu.py", "tests/test_kernels_triton.py",
           *selection, smoke=smoke)


def kernel_table(smoke: bool) -> None:
    python("benchmarks/fused_kernels.py", *(["--cpu-smoke"] if smoke else []), smoke=smoke)


def run_config(out: Path, smoke: bool, *overrides: str):
    import train

    hardware = (["trainer=cpu", "trainer.precision=bf16-mixed", "model.n_layer=1", "model.n_embd=32",
                 "model.n_head=2", "model.block_size=32", "data.batch_size=4", "data.val_batches=2"]
                if smoke else ["trainer=gpu"])
    return train.compose_config(out, *hardware, "logger=csv", "eval.compression=[]", "callbacks.progress_bar=null",
                                "callbacks.model_summary=null", "callbacks.outlier_monitor.plots=false",
                                "trainer.enable_model_summary=false", "++trainer.enable_progress_bar=false", *overrides)


def losses(run_dir: Path) -> list[float]:
    import pandas as pd

    frame = pd.read_csv(run_dir / "metrics.csv")
    return frame["train/loss"].dropna().tolist()


def training_smoke(smoke: bool) -> None:
    import train
    from outlier_lab.models.attention import registered_names

    steps = 8 if smoke else 50
    failures = []
    for variant in registered_names():
        with tempfile.TemporaryDirectory() as tmp:
            train.train(run_config(Path(tmp), smoke, f"attention={variant}", f"trainer.max_steps={steps}",
                                   f"trainer.val_check_interval={steps}", "optim.warmup_steps=2",
                                   "trainer.log_every_n_steps=1", "compile=false"))  # stage 4 checks compile
            curve = losses(Path(tmp))
        first, last = sum(curve[:3]) / 3, sum(curve[-3:]) / 3
        ok = all(math.isfinite(x) for x in curve) and last < first
        print(f"  {variant:16} loss {first:.3f} -> {last:.3f} over {len(curve)} steps {'ok' if ok else 'FAILED'}")
        if not ok:
            failures.append(variant)
    if failures:
        raise RuntimeError(f"bf16 training did not run or did not learn: {', '.join(failures)}")


def compile_table(smoke: bool) -> None:
    from benchmarks import compile as compile_benchmark

    if smoke:
        compile_benchmark.table(["tiny"], ["softmax", "softpick"], "cpu", steps=1, block=32, batch=2)
    else:
        worst = compile_benchmark.table(["nano"], ["softmax", "explicit_scale", "softpick", "sink", "differential"],
                                        "cuda", steps=10, autocast=True)
        print(f"  min_compiled_over_eager={worst:.3f}")


def headline(smoke: bool) -> None:
    import train

    steps = 10 if smoke else 2000
    rows = {}
    for variant in ("softmax", "explicit_scale"):
        with tempfile.TemporaryDirectory() as tmp:
            size = [] if smoke else ["model=small"]
            start = time.perf_counter()
            val = train.train(run_config(Path(tmp), smoke, *size, f"attention={variant}", f"trainer.max_steps={steps}",
                                         f"trainer.val_check_interval={steps // 2}", "seed=0"))["val/loss"]
            summary = json.loads((Path(tmp) / "summary.json").read_text())
            rows[variant] = {"val/loss": val, **{k: summary.get(k, float("nan")) for k in HEADLINE},
                             "seconds": time.perf_counter() - start}
    print(f"  {'variant':16} {'val loss':>8} {'top1/med':>9} {'1st-tok':>8} {'sink':>6} {'kurt':>7} {'s':>6}")
    for variant, r in rows.items():
        print(f"  {variant:16} {r['val/loss']:8.4f} {r[HEADLINE[0]]:9.1f} {r[HEADLINE[1]]:8.3f} {r[HEADLINE[2]]:6.2f} "
              f"{r[HEADLINE[3]]:7.1f} {r['seconds']:6.0f}")
    ratio = rows["explicit_scale"][HEADLINE[0]] / rows["softmax"][HEADLINE[0]]
    print(f"  explicit_scale_over_softmax_top1_median={ratio:.3f}")


STAGES = {"tests": tests, "kernels": kernel_table, "training": training_smoke, "compile": compile_table,
          "headline": headline}  # in the order of the module docstring


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="the same code on CPU at tiny sizes")
    parser.add_argument("--stages", nargs="+", choices=list(STAGES), default=list(STAGES))
    args = parser.parse_args()
    import torch

    if not args.cpu_smoke and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device here; run it on the GPU machine, or use --cpu-smoke")
    device = "cpu (smoke)" if args.cpu_smoke else torch.cuda.get_device_name()
    print(f"gpu_check on {device}, torch {torch.__version__}", flush=True)
    failed, timings = [], {}
    for name in args.stages:
        print(f"\n== {name}", flush=True)
        start = time.perf_counter()
        try:
            STAGES[name](args.cpu_smoke)
        except (Exception, subprocess.CalledProcessError):
            traceback.print_exc()
            failed.append(name)
        timings[name] = time.perf_counter() - start
    print("\n" + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in timings.items()))
    print(f"failed: {', '.join(failed) or 'none'}")
    print(f"gpu_check_failed_stages={len(failed)}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
