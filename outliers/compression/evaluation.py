"""Scoring the protocols by validation perplexity, and the glue to train.py / evaluate.py
(``compression_results`` reads the ``eval`` config and the datamodule; ``print_results``)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch
from rich.console import Console
from rich.table import Table
from torch import nn
from torch.nn import functional as F

from outliers.compression.passes import device_of, eval_mode
from outliers.compression.protocols import PROTOCOLS, check_protocols


def perplexity(model: nn.Module, batches: Iterable) -> float:
    """exp of the token-weighted mean cross-entropy over (x, y) LongTensor pairs, in eval
    mode without grad (the model's train/eval flags are restored); inf if it overflows."""
    device = device_of(model)
    total, tokens = 0.0, 0
    with eval_mode(model):
        for x, y in batches:
            logits = model(x.to(device))
            total += F.cross_entropy(logits.float().flatten(0, -2), y.to(device).flatten(), reduction="sum").item()
            tokens += y.numel()
    mean = total / tokens
    return math.exp(mean) if mean < 700 else math.inf


def evaluate_protocols(model: nn.Module, names: Iterable[str], val_batches: Iterable, calib_batches: Iterable,
                       keep_head_fp: bool = True) -> dict[str, float]:
    """Validation perplexity in full precision ("compress/fp/ppl"), then for each protocol
    name "compress/{name}/ppl" and "compress/{name}/ppl_ratio" (= ppl / fp ppl). Unknown
    names raise ConfigError before any work. The model itself is not changed."""
    names = check_protocols(names)
    val_batches, calib_batches = list(val_batches), list(calib_batches)
    fp_ppl = perplexity(model, val_batches)
    results = {"compress/fp/ppl": fp_ppl}
    for name in names:
        compressed = PROTOCOLS[name](model, calib_batches, keep_head_fp=keep_head_fp)
        ppl = perplexity(compressed, val_batches)
        del compressed
        results[f"compress/{name}/ppl"] = ppl
        results[f"compress/{name}/ppl_ratio"] = ppl / fp_ppl
    return results


def compression_results(model: torch.nn.Module, datamodule, cfg: Mapping) -> dict[str, float]:
    """``evaluate_protocols`` for the ``eval`` config (compression, calib_batches, keep_head_fp)
    on the datamodule's calibration batches (training data) and validation split."""
    names = check_protocols(cfg.get("compression"))
    if not names:
        return {}
    device = device_of(model)
    calib = [(x.to(device), y.to(device)) for x, y in datamodule.calibration_batches(int(cfg.get("calib_batches", 4)))]
    val = [(x.to(device), y.to(device)) for x, y in datamodule.validation_batches()]
    return evaluate_protocols(model, names, val, calib, keep_head_fp=bool(cfg.get("keep_head_fp", True)))


def print_results(results: dict[str, float], console: Console | None = None) -> None:
    """The results of ``evaluate_protocols`` as a table: ppl and ratio to full precision."""
    if not results:
        return
    table = Table(title="Compression (validation perplexity)")
    table.add_column("protocol")
    table.add_column("ppl", justify="right")
    table.add_column("x full precision", justify="right")
    table.add_row("full precision", f"{results['compress/fp/ppl']:.3f}", "1.000")
    for key, value in results.items():
        if key.endswith("/ppl") and key != "compress/fp/ppl":
            name = key.split("/")[1]
            table.add_row(name, f"{value:.3f}", f"{results[f'compress/{name}/ppl_ratio']:.3f}")
    (console or Console()).print(table)
