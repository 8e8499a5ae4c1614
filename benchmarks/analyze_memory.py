"""Peak memory and time of ``analyze.py model=hf:...`` on CPU, against the bf16 weights.

Builds randomly initialised LLaMA-family models (no download) in bf16, shard by shard and
straight in bf16 (the model is laid out on the meta device; each tensor is drawn in bf16 and
written to a safetensors shard, so the builder never holds more than one shard, nor any
float32 copy), and runs analyze.py on each in a child process; the child's own peak
resident memory (``os.wait4``) is what a user's machine must have.

- ``1b``: TinyLlama-1.1B's shape (22 layers, width 2048, 32 heads, 4 key-value heads,
  2.2 GB in bf16), at 8 and at 64 windows of 256 tokens: the peak must be at most
  1.3 x the weights + 1 GB, and the same within 10% whatever the number of windows.
- ``7b``: LLaMA-2-7B's shape (32 layers, width 4096, FFN 11008, 32 heads; 13.5 GB in
  bf16), 2 windows of 256 tokens.
- ``7b_intervene``: the same with intervene=[massive_zero,massive_mean,sink_drop,super_weight].
- ``1b_compress``: the 1.1B model with compress=[w8_absmax,w8a8_linear]: a protocol works on a
  copy of the model, so its peak is about twice the weights (what it means for 7B: the note).

    python benchmarks/analyze_memory.py [--stages 1b,7b,7b_intervene,1b_compress] [--keep DIR] [--tiny]

``--tiny`` runs every stage on 2-layer models of width 64 (the test suite's smoke run; its
numbers mean nothing). Last line: analyze_1b_peak_over_weights=<peak RSS / bf16 weights at 8 windows>
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {  # LlamaConfig fields of each model shape
    "1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
               num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048),
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=300, max_position_embeddings=512),
}
INTERVENTIONS = "[massive_zero,massive_mean,sink_drop,super_weight]"
# stage -> (model shape, windows, extra analyze.py arguments)
STAGES = {"1b": [("1b", 8, []), ("1b", 64, [])], "7b": [("7b", 2, [])],
          "7b_intervene": [("7b", 2, [f"intervene={INTERVENTIONS}"])],
          "1b_compress": [("1b", 2, ["compress=[w8_absmax,w8a8_linear]"])]}
SHARD_BYTES = 2_000_000_000


def build(directory: Path, shape: dict) -> int:
    """A random bf16 LLaMA of ``shape`` saved as safetensors shards with their index; the
    number of parameters. Linear weights and embeddings ~ N(0, 0.02) (LLaMA's
    initializer_range), norms 1."""
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**shape, dtype="bfloat16")
    with torch.device("meta"):
        layout = LlamaForCausalLM(config)
    directory.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(0)
    weight_map, shard, size, total = {}, {}, 0, 0

    def flush():
        nonlocal shard, size
        name = f"model-{len(set(weight_map.values())) + 1:05d}.safetensors"
        save_file(shard, directory / name, metadata={"format": "pt"})
        weight_map.update({key: name for key in shard})
        shard, size = {}, 0

    for key, parameter in layout.named_parameters():
        tensor = torch.empty(parameter.shape, dtype=torch.bfloat16)
        if key.endswith("norm.weight"):
            tensor.fill_(1.0)
        else:
            tensor.normal_(0.0, config.initializer_range, generator=generator)
        shard[key] = tensor
        size += tensor.numel() * 2
        total += tensor.numel()
        if size >= SHARD_BYTES:
            flush()
    if shard:
        flush()
    (directory / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total * 2}, "weight_map": weight_map}, indent=1))
    config.save_pretrained(directory)
    return total


def run_analyze(directory: Path, text: Path, windows: int, window: int, extra: list[str], out: Path) -> dict:
    """analyze.py in a child process: its peak RSS (GB), wall time and seconds per window."""
    command = [sys.executable, "analyze.py", f"model=hf:{directory}", f"text={text}", "tokenizer=byte",
               f"windows={windows}", f"window={window}", "dtype=bfloat16", f"hydra.run.dir={out}", *extra]
    start = time.perf_counter()
    with open(out.with_suffix(".log"), "w") as log:
        child = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                 env={**os.environ, "HF_HUB_OFFLINE": "1"})
        _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status):
        sys.exit(f"analyze.py failed (exit {os.waitstatus_to_exitcode(status)}):\n"
                 f"{out.with_suffix('.log').read_text()[-3000:]}")
    analysis = json.loads((out / "analysis.json").read_text())
    return {"peak_gb": usage.ru_maxrss * 1024 / 1e9, "seconds": seconds,  # ru_maxrss is in KiB on Linux
            "seconds_per_window": analysis["seconds_per_window"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", default="1b,7b,7b_intervene,1b_compress")
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--keep", type=Path, default=None, help="build the models here (and keep them)")
    parser.add_argument("--tiny", action="store_true", help="every stage on a tiny model (a smoke run)")
    args = parser.parse_args()
    stages = args.stages.split(",")
    if unknown := [s for s in stages if s not in STAGES]:
        sys.exit(f"unknown stage(s) {unknown}; choose from {', '.join(STAGES)}")
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        models = args.keep or Path(scratch)
        text = Path(scratch) / "text.txt"
        text.write_text((ROOT / "README.md").read_text() * 8)
        for stage in stages:
            for shape, windows, extra in STAGES[stage]:
                shape = "tiny" if args.tiny else shape
                directory = models / f"llama_{shape}"
                if not (directory / "config.json").exists():
                    start = time.perf_counter()
                    parameters = build(directory, SHAPES[shape])
                    print(f"{shape}: {parameters / 1e9:.2f} B parameters, {parameters * 2 / 1e9:.2f} GB in bf16, "
                          f"built in {time.perf_counter() - start:.0f} s", flush=True)
                weights_gb = sum(f.stat().st_size for f in directory.glob("*.safetensors")) / 1e9
                got = run_analyze(directory, text, windows, args.window, extra, Path(scratch) / f"{stage}_{windows}")
                results[stage, windows] = {**got, "weights_gb": weights_gb}
                print(f"{stage}: {windows} windows of {args.window}: peak RSS {got['peak_gb']:.2f} GB "
                      f"({got['peak_gb'] / weights_gb:.2f} x the {weights_gb:.2f} GB of bf16 weights), "
                      f"{got['seconds']:.0f} s in all, {got['seconds_per_window']:.1f} s a window", flush=True)
    if ("1b", 8) in results and ("1b", 64) in results:
        few, many = results["1b", 8], results["1b", 64]
        bound = 1.3 * few["weights_gb"] + 1.0
        print(f"1b at 8 windows: {few['peak_gb']:.2f} GB against the bound 1.3 x weights + 1 GB = {bound:.2f} GB "
              f"({'within' if few['peak_gb'] <= bound else 'ABOVE'})")
        print(f"1b at 64 windows / at 8: {many['peak_gb'] / few['peak_gb']:.3f}")
        print(f"analyze_1b_peak_over_weights={few['peak_gb'] / few['weights_gb']:.3f}")


if __name__ == "__main__":
    main()
