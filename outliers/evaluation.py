"""Compression protocols on a trained model, against its own validation split: the glue
between outliers.compression and train.py / evaluate.py."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from rich.console import Console
from rich.table import Table

from outliers.compression import check_protocols, evaluate_protocols


def compression_results(model: torch.nn.Module, datamodule, cfg: Mapping) -> dict[str, float]:
    names = check_protocols(cfg.get("compression"))
    if not names:
        return {}
    device = next(model.parameters()).device
    calib = [(x.to(device), y.to(device)) for x, y in datamodule.calibration_batches(int(cfg.get("calib_batches", 4)))]
    val = [(x.to(device), y.to(device)) for x, y in datamodule.validation_batches()]
    return evaluate_protocols(model, names, val, calib, keep_head_fp=bool(cfg.get("keep_head_fp", True)))


def print_results(results: dict[str, float], console: Console | None = None) -> None:
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
