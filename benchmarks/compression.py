"""Wall time of the default compression protocols (configs/eval/default.yaml) on a `nano`
checkpoint, through evaluate.py's code path, on the default corpus's validation split
(16 x 16 windows of 256 tokens) with 4 calibration batches.

    python benchmarks/compression.py                 # a freshly initialised nano model
    python benchmarks/compression.py --ckpt outputs/runs/<date>/<run>/checkpoints/last.ckpt

Last line: compression_seconds=<seconds for the default protocols, full precision included>
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: runs from any working directory

import evaluate  # noqa: E402
from outlier_lab.models.gpt import GPT  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", help="a train.py checkpoint; default: an untrained nano model")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ckpt, overrides = args.ckpt, []
        if ckpt is None:
            model = GPT(vocab_size=256, block_size=256, n_layer=4, n_head=4, n_embd=128)
            ckpt = str(Path(tmp) / "nano.pt")
            torch.save({"model": model.state_dict(), "model_args": {"n_head": 4}}, ckpt)
            overrides = ["data=stdlib"]  # a nanoGPT checkpoint carries no data config
        with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
            cfg = compose(config_name="evaluate", overrides=[f"ckpt={ckpt}", f"paths.output_dir={tmp}", *overrides])
        evaluate.load_model(ckpt)  # warm imports and the token cache before timing
        start = time.perf_counter()
        results = evaluate.evaluate(cfg)
        seconds = time.perf_counter() - start
    protocols = sum(key.endswith("/ppl_ratio") for key in results)
    print(f"{protocols} protocols on {ckpt if args.ckpt else 'an untrained nano model'}: {seconds:.1f} s")
    print(f"compression_seconds={seconds:.1f}")


if __name__ == "__main__":
    main()
