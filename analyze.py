"""The outlier metrics of any checkpoint, by the same code as the OutlierMonitor's probes.

    python analyze.py ckpt=outputs/runs/<date>/<run>/checkpoints/last.ckpt          # the run's probe windows
    python analyze.py ckpt=PATH text=FILE                                          # windows of a text file
    python analyze.py ckpt=ckpt.pt nanogpt.attention=ca_bias text=FILE             # a nanoGPT / seed-paper checkpoint

It prints the headline metrics, writes ``analysis.json`` (flat keys, the names the monitor
logs, e.g. ``outliers/attn/sink_rate``) and the probe figures (``plots/``) into its run
directory. Bad input (a missing or foreign checkpoint, a text shorter than one window, a
vocabulary the model does not have) is one line, exit status 2.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import hydra
import lightning as L
import torch
from omegaconf import DictConfig
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from data.tokenizers import build_tokenizer
from errors import ConfigError, exit_on_config_error
from models.checkpoint import load_model
from outliers.monitor import plots
from outliers.metrics import declared, expand
from outliers.metrics.tokens import vocabulary_classes
from outliers.monitor.probes import data_domains, measure_model

console = Console()
THRESHOLDS = ("massive_abs", "massive_ratio", "token_ratio", "sink_eps", "sink_tokens")


def probe_windows(cfg: DictConfig, block_size: int, data_config: dict | None):
    """(ids (windows, window), decode(id) -> text, vocabulary size, what the data says about
    the windows: its query domains and optimum, see ``probes.data_domains``) of what to analyse."""
    if cfg.text is None:
        if data_config is None:
            raise ConfigError(f"{cfg.ckpt} carries no data config (a nanoGPT checkpoint): give text=FILE")
        datamodule = hydra.utils.instantiate({**data_config, "block_size": block_size})
        datamodule.prepare_data()
        datamodule.setup("validate")
        ids = datamodule.probe_batch(int(cfg.windows))
        return ids, datamodule.decode_token, datamodule.vocab_size, data_domains(datamodule, ids)
    path = Path(cfg.text)
    if not path.is_file():
        raise ConfigError(f"text file not found: {path}")
    if data_config and "tokenizer" not in data_config:
        raise ConfigError(f"{cfg.ckpt} was trained on data without a text tokenizer "
                          f"({data_config.get('_target_')}): leave out text= to analyse its own probe windows")
    tokenizer = build_tokenizer(data_config["tokenizer"] if data_config else cfg.nanogpt.tokenizer)
    bos = tokenizer.vocab_size if data_config and data_config.get("bos") else None
    window = int(cfg.window or block_size)
    if not 2 <= window <= block_size:
        raise ConfigError(f"window={window}: choose 2 to the model's block size {block_size}")
    per = window - (bos is not None)  # text tokens per window
    ids = torch.as_tensor(tokenizer.encode_batch([path.read_text(errors="replace")])[0].astype("int64"))
    count = min(int(cfg.windows), len(ids) // per)
    if count < 1:
        raise ConfigError(f"{path} has {len(ids)} tokens, fewer than one window of {per}; use a longer text or window=")
    rows = ids[: count * per].view(count, per)
    if bos is not None:
        rows = torch.cat([torch.full((count, 1), bos), rows], dim=1)

    def decode(token: int) -> str:
        return "<bos>" if token == bos else tokenizer.decode([token])

    return rows, decode, tokenizer.vocab_size + (bos is not None), {}


def analyze(cfg: DictConfig) -> dict[str, float]:
    L.seed_everything(cfg.seed, verbose=False)
    model, data_config = load_model(cfg.ckpt, cfg.get("nanogpt"))
    idx, decode, vocab_size, domains = probe_windows(cfg, model.block_size, data_config)
    if vocab_size > model.config["vocab_size"]:
        raise ConfigError(f"vocabulary mismatch: the tokenizer has {vocab_size} ids, the model only "
                          f"{model.config['vocab_size']} (nanogpt.tokenizer= or a checkpoint with its data config)")
    thresholds = {key: cfg.callbacks.outlier_monitor[key] for key in THRESHOLDS}
    result, metrics = measure_model(model, idx, vocabulary_classes(decode, vocab_size), **thresholds, **domains)
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"ckpt": str(cfg.ckpt), "text": cfg.text, "windows": idx.shape[0], "window": idx.shape[1]}
    (out / "analysis.json").write_text(json.dumps({**meta, **metrics}, indent=2, sort_keys=True))
    labels = [decode(int(t)) for t in idx[0]]
    plots.save_figures(plots.probe_figures(result, metrics, labels), out / "plots")
    print_headline(metrics, meta)
    console.print(f"[bold]Analysis:[/] {escape(str(out / 'analysis.json'))} and {escape(str(out / 'plots'))}/")
    return metrics


def print_headline(metrics: dict[str, float], meta: dict) -> None:
    table = Table(title=f"Outlier metrics of {meta['ckpt']} ({meta['windows']} windows of {meta['window']} tokens)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for metric in expand(declared("outliers"), metrics):
        if metric.curve and metric.key in metrics:
            value = metrics[metric.key]
            table.add_row(f"{metric.title} ({metric.key})", "nan" if math.isnan(value) else f"{value:.4g}")
    console.print(table)


@hydra.main(version_base="1.3", config_path="configs", config_name="analyze")
def main(cfg: DictConfig) -> None:
    with exit_on_config_error(console):
        analyze(cfg)


if __name__ == "__main__":
    main()
