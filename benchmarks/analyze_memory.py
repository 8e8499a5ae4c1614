"""Peak memory of ``analyze.py model=hf:...`` on a 1B-parameter model in bf16 on CPU.

Builds a randomly initialised LLaMA-family model of TinyLlama-1.1B's shape from a
transformers config (no download), saves it in bf16 with save_pretrained, and runs
analyze.py on it in a child process; the child's peak resident memory (getrusage of the
children) is what a user's machine must have. The weights alone are 2.2 GB in bf16.

    python benchmarks/analyze_memory.py [--layers 22] [--windows 8] [--window 256] [--keep DIR]

Last line: analyze_peak_rss_gb=<the child's peak RSS in GB>
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def build(directory: Path, layers: int) -> int:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=2048, intermediate_size=5632, num_hidden_layers=layers, num_attention_heads=32,
                         num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048, dtype="bfloat16")
    torch.manual_seed(0)
    with torch.device("cpu"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    parameters = sum(p.numel() for p in model.parameters())
    model.save_pretrained(directory)
    return parameters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=22)
    parser.add_argument("--windows", type=int, default=8)
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--keep", type=Path, default=None, help="build the model here (and keep it)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        directory = args.keep or Path(scratch) / "model"
        start = time.perf_counter()
        parameters = build(directory, args.layers) if not (directory / "config.json").exists() else None
        print(f"model: {parameters or 'existing'} parameters, built in {time.perf_counter() - start:.0f} s")
        text = Path(scratch) / "text.txt"
        text.write_text((ROOT / "README.md").read_text() * 4)
        start = time.perf_counter()
        result = subprocess.run([sys.executable, "analyze.py", f"model=hf:{directory}", f"text={text}", "tokenizer=byte",
                                 f"windows={args.windows}", f"window={args.window}", "dtype=bfloat16",
                                 f"hydra.run.dir={Path(scratch) / 'out'}"], cwd=ROOT, capture_output=True, text=True,
                                env={**os.environ, "HF_HUB_OFFLINE": "1"})
        seconds = time.perf_counter() - start
        if result.returncode:
            sys.exit(f"analyze.py failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 / 1e9  # ru_maxrss is in KiB on Linux
    print(f"analyze.py: {args.windows} windows of {args.window} tokens in {seconds:.0f} s")
    print(f"analyze_peak_rss_gb={peak_gb:.2f}")


if __name__ == "__main__":
    main()
