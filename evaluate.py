"""Compression protocols on a trained checkpoint, on the validation split of a corpus.

    python evaluate.py ckpt=outputs/runs/<date>/<run>/checkpoints/last.ckpt
    python evaluate.py ckpt=gpt2-explicit-scale/ckpt.pt nanogpt.attention=explicit_scale data=openwebtext
    python evaluate.py ckpt=PATH 'eval.compression=[w8a8,smooth_w8a8]'

Lightning checkpoints of train.py rebuild their own model; nanoGPT checkpoints (the seed
paper's format) go through GPT.from_nanogpt. Results: a table, and summary.json in the
run directory.
"""

from __future__ import annotations

import json
from pathlib import Path

import hydra
import lightning as L
import torch
from omegaconf import DictConfig
from rich.console import Console
from rich.markup import escape

from errors import ConfigError, exit_on_config_error
from models.checkpoint import load_checkpoint
from models.gpt import GPT
from models.lit_gpt import LitGPT
from outliers.compression import check_protocols, compression_results, print_results

console = Console()


def load_model(path: str | Path, nanogpt: DictConfig | dict | None = None) -> GPT:
    """A GPT from a train.py checkpoint or a nanoGPT checkpoint / state dict (weights_only)."""
    checkpoint = load_checkpoint(path, "a train.py checkpoint, or a nanoGPT checkpoint or state dict")
    if "state_dict" in checkpoint and "hyper_parameters" in checkpoint:  # train.py / Lightning
        module = LitGPT(**checkpoint["hyper_parameters"])
        module.load_state_dict(checkpoint["state_dict"])
        return module.model
    nanogpt = dict(nanogpt or {})
    state_dict = checkpoint.get("model", checkpoint)
    n_head = (checkpoint.get("model_args") or {}).get("n_head") or nanogpt.get("n_head")
    if not n_head:
        raise ConfigError(f"{path} looks like a nanoGPT state dict without model_args: set nanogpt.n_head")
    return GPT.from_nanogpt(state_dict, n_head=int(n_head), attention=nanogpt.get("attention", "softmax"))


def evaluate(cfg: DictConfig) -> dict[str, float]:
    check_protocols(cfg.eval.compression)
    L.seed_everything(cfg.seed)
    model = load_model(cfg.ckpt, cfg.get("nanogpt")).eval()
    datamodule = hydra.utils.instantiate(cfg.data, block_size=model.block_size)
    if datamodule.vocab_size > model.config["vocab_size"]:
        raise ConfigError(f"data.tokenizer={datamodule.tokenizer.name} has {datamodule.vocab_size} tokens; "
                          f"the model only {model.config['vocab_size']}")
    datamodule.prepare_data()
    datamodule.setup("validate")
    if torch.cuda.is_available():
        model = model.cuda()
    results = compression_results(model, datamodule, cfg.eval)
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps({"ckpt": str(cfg.ckpt), **results}, indent=2, sort_keys=True))
    print_results(results, console)
    console.print(f"[bold]Results:[/] {escape(str(out / 'summary.json'))}")
    return results


@hydra.main(version_base="1.3", config_path="configs", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    with exit_on_config_error(console):
        evaluate(cfg)


if __name__ == "__main__":
    main()
