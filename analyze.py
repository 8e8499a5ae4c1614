"""The outlier metrics of any checkpoint or Hugging Face model, by the same code as the
OutlierMonitor's probes, and the interventions that show what the outliers do.

    python analyze.py ckpt=outputs/runs/<date>/<run>/checkpoints/last.ckpt          # the run's probe windows
    python analyze.py ckpt=PATH text=FILE                                          # windows of a text file
    python analyze.py ckpt=ckpt.pt nanogpt.attention=ca_bias text=FILE             # a nanoGPT / seed-paper checkpoint
    python analyze.py model=hf:PATH_OR_NAME text=FILE [dtype=bfloat16]             # a transformers causal LM
    python analyze.py ... intervene=[massive_zero,massive_mean,sink_drop,super_weight,super_column]

It prints the headline metrics, writes ``analysis.json`` (flat keys, the names the monitor
logs, e.g. ``outliers/attn/sink_rate``), the probe figures (``plots/``) and, with
``intervene``, ``interventions.json`` into its run directory. Bad input (a missing or
foreign checkpoint, a text shorter than one window, a vocabulary the model does not have,
an unsupported model family, a hub name without a network) is one line, exit status 2.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import hydra
import lightning as L
import torch
from omegaconf import DictConfig
from rich.console import Console
from rich.markup import escape
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)
from rich.table import Table

from outlier_lab.data.interface import check_data_module
from outlier_lab.data.tokenizers import TOKENIZERS, build_tokenizer
from outlier_lab.errors import ConfigError, exit_on_config_error
from outlier_lab.models.checkpoint import checkpoint_data, load_model
from outlier_lab.monitor import plots
from outlier_lab.metrics import declared, expand
from outlier_lab.metrics.thresholds import Thresholds, register_config
from outlier_lab.metrics.tokens import vocabulary_classes
from outlier_lab.probe.ours import data_domains, measure_model
from outlier_lab.probe.stream import hand_freed_memory_back
from outlier_lab.pretrained import load
from outlier_lab.probe import families, hf as hf_probe

console = Console()
register_config()  # the thresholds group of configs/analyze.yaml


@dataclass
class Subject:
    """What is analysed: the model, how to run and probe it, and its windows."""
    name: str
    model: torch.nn.Module
    family: families.Family
    idx: torch.Tensor                      # (windows, window) token ids
    decode: object                         # id -> text
    # (idx, token classes, on_pass, **thresholds and domains) -> (partials, metrics), window by window
    measure: object
    vocab_size: int = 0                    # the tokenizer's ids: every one gets a position class
    domains: dict = field(default_factory=dict)


def checkpoint_subject(cfg: DictConfig) -> Subject:
    """A train.py or nanoGPT checkpoint, on its own probe windows or the windows of a text."""
    model, data_config = load_model(cfg.ckpt, cfg.get("nanogpt"))
    model.eval()
    if cfg.get("data") is not None:  # data=NAME, or +data.KEY=VALUE over the checkpoint's own
        data_config = checkpoint_data(cfg.data, data_config, model.block_size, cfg.ckpt)
    idx, decode, vocab_size, domains = probe_windows(cfg, model.block_size, data_config)
    if vocab_size > model.config["vocab_size"]:
        raise ConfigError(f"vocabulary mismatch: the tokenizer has {vocab_size} ids, the model only "
                          f"{model.config['vocab_size']} (nanogpt.tokenizer= or a checkpoint with its data config)")
    return Subject(str(cfg.ckpt), model, families.OURS, idx, decode,
                   lambda idx, classes, on_pass, **kw: measure_model(model, idx, classes, 1, on_pass, **kw),
                   vocab_size, domains)


def hf_subject(cfg: DictConfig) -> Subject:
    """A transformers causal LM on the windows of a text, cut by its own tokenizer (or one of ours)."""
    name = str(cfg.hf)
    if cfg.text is None:
        raise ConfigError("a Hugging Face model needs a text to analyse: give text=FILE")
    path = text_file(cfg)
    model, tokenizer, family = load.load_hf(name, str(cfg.dtype), str(cfg.device))
    text = path.read_text(errors="replace")
    if tokenizer is None or cfg.tokenizer is not None:  # the model's own tokenizer unless one is asked for
        if cfg.tokenizer is None:
            raise ConfigError(f"{name} has no tokenizer files: give tokenizer= (one of {', '.join(TOKENIZERS)})")
        ours = build_tokenizer(cfg.tokenizer)
        ids, bos, decode = ours.encode_batch([text])[0].astype("int64"), None, lambda t: ours.decode([t])
        classes = ours.vocab_size  # the ids the position classes are needed for
    else:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        bos, decode, classes = load.leading_bos(tokenizer), lambda t: tokenizer.decode([t]), len(tokenizer)
    context = load.context_length(model) or load.DEFAULT_WINDOW
    window = int(cfg.window or min(load.DEFAULT_WINDOW, context))
    if window > context:
        raise ConfigError(f"window={window}: the model's context is {context} tokens")
    idx = load.text_windows(ids, window, int(cfg.windows), bos, str(path))
    vocab = model.get_input_embeddings().num_embeddings
    if int(idx.max()) >= vocab:
        raise ConfigError(f"vocabulary mismatch: the text has token id {int(idx.max())}, the model only {vocab} ids")
    hf_probe.prepare(model, family)
    return Subject(name, model, family, idx, decode,
                   lambda idx, token_classes, on_pass, **kw: hf_probe.measure_hf(model, family, idx, token_classes, 1,
                                                                                 on_pass, **kw), classes)


def probe_windows(cfg: DictConfig, block_size: int, data_config: dict | None):
    """(ids (windows, window), decode(id) -> text, vocabulary size, what the data says about
    the windows: its query domains and optimum, see ``probes.data_domains``) of what to analyse."""
    if cfg.text is None:
        if data_config is None:
            raise ConfigError(f"{cfg.ckpt} carries no data config (a nanoGPT checkpoint): give text=FILE or data=NAME")
        datamodule = hydra.utils.instantiate({**data_config, "block_size": block_size})
        check_data_module(datamodule)
        datamodule.prepare_data()
        datamodule.setup("validate")
        ids = datamodule.probe_batch(int(cfg.windows))
        return ids, datamodule.decode_token, datamodule.vocab_size, data_domains(datamodule, ids)
    path = text_file(cfg)
    if data_config and "tokenizer" not in data_config:
        raise ConfigError(f"{cfg.ckpt} was trained on data without a text tokenizer "
                          f"({data_config.get('_target_')}): leave out text= to analyse its own probe windows")
    tokenizer = build_tokenizer(data_config["tokenizer"] if data_config else cfg.nanogpt.tokenizer)
    bos = tokenizer.vocab_size if data_config and data_config.get("bos") else None
    window = int(cfg.window or block_size)
    if not 2 <= window <= block_size:
        raise ConfigError(f"window={window}: choose 2 to the model's block size {block_size}")
    ids = tokenizer.encode_batch([path.read_text(errors="replace")])[0].astype("int64")
    rows = load.text_windows(ids, window, int(cfg.windows), bos, str(path))

    def decode(token: int) -> str:
        return "<bos>" if token == bos else tokenizer.decode([token])

    return rows, decode, tokenizer.vocab_size + (bos is not None), {}


def text_file(cfg: DictConfig) -> Path:
    path = Path(cfg.text)
    if not path.is_file():
        raise ConfigError(f"text file not found: {path}")
    return path


def analyze(cfg: DictConfig) -> dict[str, float]:
    L.seed_everything(cfg.seed, verbose=False)
    if (cfg.ckpt is None) == (cfg.hf is None):
        raise ConfigError("give one of ckpt=PATH (a train.py or nanoGPT checkpoint) or model=hf:NAME_OR_PATH")
    hand_freed_memory_back()  # before the weights and the first window are allocated
    subject = hf_subject(cfg) if cfg.hf is not None else checkpoint_subject(cfg)
    thresholds = Thresholds.of(cfg.thresholds)
    classes = vocabulary_classes(subject.decode, subject.vocab_size)
    windows = subject.idx.shape[0]
    start = time.perf_counter()
    with Progress(TextColumn("probe"), BarColumn(), MofNCompleteColumn(), TextColumn("windows"), TimeElapsedColumn(),
                  TextColumn("left"), TimeRemainingColumn(), console=console, transient=True) as progress:
        task = progress.add_task("probe", total=windows)
        parts, metrics = subject.measure(subject.idx, classes, lambda done: progress.update(task, completed=done),
                                         thresholds=thresholds, **subject.domains)
    seconds = time.perf_counter() - start
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"ckpt": subject.name, "text": cfg.text, "windows": windows, "window": subject.idx.shape[1],
            "seconds_per_window": seconds / windows}
    (out / "analysis.json").write_text(json.dumps({**meta, **metrics}, indent=2, sort_keys=True))
    labels = [subject.decode(int(t)) for t in subject.idx[0]]
    figures = plots.probe_figures(parts, metrics, labels)
    figures["weight_columns"] = plots.weight_columns(metrics, "FFN down-projection column ratios per layer")
    plots.save_figures(figures, out / "plots")
    print_headline(metrics, meta)
    if cfg.intervene:
        from outlier_lab.pretrained.interventions import run_interventions

        rows = run_interventions(subject.model, subject.family, subject.idx, cfg.intervene, parts, metrics,
                                 thresholds)
        (out / "interventions.json").write_text(json.dumps(rows, indent=2))
        print_interventions(rows)
    if cfg.compress:
        from outlier_lab.compression.evaluation import print_results
        from outlier_lab.pretrained.compress import score_on_windows

        results = score_on_windows(subject.model, subject.family, subject.idx, cfg.compress)
        (out / "compression.json").write_text(json.dumps(results, indent=2))
        print_results(results, console)
    console.print(f"[bold]Analysis:[/] {escape(str(out / 'analysis.json'))} and {escape(str(out / 'plots'))}/")
    return metrics


def print_headline(metrics: dict[str, float], meta: dict) -> None:
    table = Table(title=f"Outlier metrics of {meta['ckpt']} ({meta['windows']} windows of {meta['window']} tokens, "
                        f"{meta['seconds_per_window']:.3g} s a window)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for metric in expand(declared("outliers"), metrics):
        if metric.curve and metric.key in metrics:
            value = metrics[metric.key]
            table.add_row(f"{metric.title} ({metric.key})", "nan" if math.isnan(value) else f"{value:.4g}")
    console.print(table)


def print_interventions(rows: list[dict]) -> None:
    table = Table(title="Interventions (perplexity on the windows, next-token KL to the unmodified model)")
    for column in ("intervention", "edited", "perplexity", "KL"):
        table.add_column(column, justify="left" if column in ("intervention", "edited") else "right")
    for row in rows:
        table.add_row(row["name"], escape(str(row["edited"])), f"{row['ppl']:.4g}", f"{row['kl']:.4g}")
    console.print(table)


@hydra.main(version_base="1.3", config_path="configs", config_name="analyze")
def main(cfg: DictConfig) -> None:
    with exit_on_config_error(console):
        analyze(cfg)


def hf_argument(arg: str) -> str:
    """``model=hf:NAME`` as the ``hf=NAME`` key: Hydra reads ``model=`` as a choice in the
    training configs' model group, which analyze.yaml does not use."""
    return "hf=" + arg.removeprefix("model=hf:") if arg.startswith("model=hf:") else arg


if __name__ == "__main__":
    sys.argv = [hf_argument(arg) for arg in sys.argv]
    main()
