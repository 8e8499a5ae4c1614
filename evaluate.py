"""Compression protocols on a trained checkpoint, on the validation split of a corpus.

    python evaluate.py ckpt=outputs/runs/<date>/<run>/checkpoints/last.ckpt
    python evaluate.py ckpt=gpt2-explicit-scale/ckpt.pt nanogpt.attention=explicit_scale data=openwebtext
    python evaluate.py ckpt=PATH 'eval.compression=[w8a8,smooth_w8a8]'
    python evaluate.py ckpt=RUN/checkpoints/last.ckpt paths.output_dir=RUN   # add the results to RUN's summary

Lightning checkpoints of train.py rebuild their own model and are evaluated on the data
they were trained with (tokenizer, BOS token, windows) unless data=NAME says otherwise;
nanoGPT checkpoints (the seed paper's format) go through GPT.from_nanogpt and need data=NAME. Results: a table, and summary.json in the
run directory.
"""

from __future__ import annotations

from pathlib import Path

import hydra
import lightning as L
import torch
from omegaconf import DictConfig
from rich.console import Console
from rich.markup import escape

from outlier_lab.data.interface import check_data_module
from outlier_lab.errors import ConfigError, exit_on_config_error
from outlier_lab.models.checkpoint import checkpoint_data, load_model
from outlier_lab.compression import check_protocols, score_on_datamodule, print_results
from outlier_lab.summary import merge_summary

console = Console()


def evaluate(cfg: DictConfig) -> dict[str, float]:
    check_protocols(cfg.eval.compression)
    L.seed_everything(cfg.seed)
    model, saved = load_model(cfg.ckpt, cfg.get("nanogpt"))
    model.eval()
    datamodule = hydra.utils.instantiate(checkpoint_data(cfg.get("data"), saved, model.block_size, cfg.ckpt))
    check_data_module(datamodule)
    if datamodule.vocab_size > model.config["vocab_size"]:
        raise ConfigError(f"data.tokenizer={datamodule.tokenizer.name} has {datamodule.vocab_size} tokens; "
                          f"the model only {model.config['vocab_size']}")
    datamodule.prepare_data()
    datamodule.setup("validate")
    if torch.cuda.is_available():
        model = model.cuda()
    results = score_on_datamodule(model, datamodule, cfg.eval)
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    # merged, not overwritten: with paths.output_dir=<run dir> the results join that run's summary
    merge_summary(out / "summary.json", {"compress/ckpt": str(cfg.ckpt), **results})
    print_results(results, console)
    console.print(f"[bold]Results:[/] {escape(str(out / 'summary.json'))}")
    return results


@hydra.main(version_base="1.3", config_path="configs", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    with exit_on_config_error(console):
        evaluate(cfg)


if __name__ == "__main__":
    main()
