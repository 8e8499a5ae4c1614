"""Scoring the protocols on the validation batches: perplexity, and how far each compressed
model's next-token distribution moves from the full-precision one (KL divergence, top-1
agreement); and the glue to train.py / evaluate.py (``score_on_datamodule`` reads the
``eval`` config and the datamodule; ``print_results``)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from typing import NamedTuple

import torch
from rich.console import Console
from rich.table import Table
from torch import nn
from torch.nn import functional as F

from outlier_lab.compression.passes import device_of, eval_mode
from outlier_lab.compression.protocols import PROTOCOLS, check_protocols

ROWS = 4096  # tokens per slice of the divergence: (ROWS, vocab) float32 temporaries, not (B*T, vocab)
# the most bytes of full-precision log-probabilities kept across protocols (evaluate_protocols):
# a nano run's 65,536 validation tokens x 256 bytes take 64 MiB; GPT-2's vocabulary, 13 GiB
REFERENCE_BYTES = 256 * 2**20


def _cross_entropy_sum(logits: torch.Tensor, y: torch.Tensor) -> float:
    return F.cross_entropy(logits.float().flatten(0, -2), y.flatten(), reduction="sum").item()


def _exp_mean(total: float, tokens: int) -> float:
    mean = total / tokens
    return math.exp(mean) if mean < 700 else math.inf


def perplexity(model: nn.Module, batches: Iterable) -> float:
    """exp of the token-weighted mean cross-entropy over (x, y) LongTensor pairs, in eval
    mode without grad (the model's train/eval flags are restored); inf if it overflows."""
    device = device_of(model)
    total, tokens = 0.0, 0
    with eval_mode(model):
        for x, y in batches:
            total += _cross_entropy_sum(model(x.to(device)), y.to(device))
            tokens += y.numel()
    return _exp_mean(total, tokens)


def _divergence(fp_logp: torch.Tensor, fp_top1: torch.Tensor, logits: torch.Tensor) -> tuple[float, int]:
    """Over the tokens of one batch: the sum of KL(p_fp || p) = sum_v p_fp(v) (log p_fp(v) -
    log p(v)), p = softmax(logits), and the count of tokens with argmax p = ``fp_top1``.
    ``fp_logp``: (N, vocab) full-precision log-probabilities; ``logits``: (..., vocab)."""
    logits = logits.float().flatten(0, -2)
    kl, agree = 0.0, 0
    for ref, rows, top1 in zip(fp_logp.split(ROWS), logits.split(ROWS), fp_top1.split(ROWS)):
        kl += F.kl_div(rows.log_softmax(-1), ref, log_target=True, reduction="sum").item()
        agree += (rows.argmax(-1) == top1).sum().item()
    return kl, agree


class _Reference(NamedTuple):
    """One validation batch on the model's device with the full-precision model's answer:
    its cross-entropy sum, (N, vocab) log-probabilities and (N,) argmax."""
    x: torch.Tensor
    y: torch.Tensor
    cross_entropy: float
    logp: torch.Tensor
    top1: torch.Tensor


def _references(model: nn.Module, val_batches: list) -> Iterator[_Reference]:
    """The full-precision pass, batch by batch (call inside ``eval_mode(model)``)."""
    device = device_of(model)
    for x, y in val_batches:
        x, y = x.to(device), y.to(device)
        logits = model(x)
        yield _Reference(x, y, _cross_entropy_sum(logits, y), logits.float().flatten(0, -2).log_softmax(-1),
                         logits.argmax(-1).flatten())


def evaluate_protocols(model: nn.Module, names: Iterable[str], val_batches: Iterable, calib_batches: Iterable,
                       keep_head_fp: bool = True) -> dict[str, float]:
    """Validation perplexity in full precision ("compress/fp/ppl"), then for each protocol
    name "compress/{name}/ppl", "ppl_ratio" (= ppl / fp ppl), "kl" (the mean over all
    validation tokens of KL(p_fp || p_compressed) in nats) and "top1_agreement" (the share
    of tokens whose argmax agrees). Unknown names raise ConfigError before any work. The
    model itself is not changed.

    One protocol at a time: its compressed copy is built, scored on every validation batch
    and freed before the next one is built, so at most one copy exists besides the model.
    The full-precision log-probabilities are computed once and kept for every protocol
    when they take at most REFERENCE_BYTES (a small vocabulary and validation split, as a
    training run's); otherwise they are recomputed batch by batch for each protocol, so
    that no (tokens, vocab) tensor of the whole split is ever held."""
    names = check_protocols(names)
    val_batches, calib_batches = list(val_batches), list(calib_batches)
    kept: list[_Reference] | None = []  # None once they outgrow REFERENCE_BYTES
    fp_total, tokens, kept_bytes = 0.0, 0, 0
    with eval_mode(model):
        for ref in _references(model, val_batches):
            fp_total += ref.cross_entropy
            tokens += ref.y.numel()
            if kept is not None:
                kept.append(ref)
                kept_bytes += ref.logp.numel() * ref.logp.element_size()
                kept = kept if kept_bytes <= REFERENCE_BYTES else None
    fp_ppl = _exp_mean(fp_total, tokens)
    results = {"compress/fp/ppl": fp_ppl}
    for name in names:
        compressed = PROTOCOLS[name](model, calib_batches, keep_head_fp=keep_head_fp)
        total, kl, agree = 0.0, 0.0, 0
        with eval_mode(model), eval_mode(compressed):
            for ref in kept if kept is not None else _references(model, val_batches):
                logits = compressed(ref.x)
                batch_kl, batch_agree = _divergence(ref.logp, ref.top1, logits)
                total += _cross_entropy_sum(logits, ref.y)
                kl += batch_kl
                agree += batch_agree
                del logits
        del compressed  # freed here, before the next protocol builds its copy
        ppl = _exp_mean(total, tokens)
        results.update({f"compress/{name}/ppl": ppl, f"compress/{name}/ppl_ratio": ppl / fp_ppl,
                        f"compress/{name}/kl": kl / tokens, f"compress/{name}/top1_agreement": agree / tokens})
    return results


def score_on_datamodule(model: torch.nn.Module, datamodule, cfg: Mapping) -> dict[str, float]:
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
    """The results of ``evaluate_protocols`` as a table: ppl, its ratio to full precision,
    the mean KL divergence from full precision and the top-1 agreement with it."""
    if not results:
        return
    table = Table(title="Compression (validation perplexity; divergence from full precision)")
    for header in ("protocol", "ppl", "x full precision", "KL(fp || q), nats/token", "top-1 agreement"):
        table.add_column(header, justify="left" if header == "protocol" else "right")
    table.add_row("full precision", f"{results['compress/fp/ppl']:.3f}", "1.000", "0", "1.000")
    for key, value in results.items():
        if key.endswith("/ppl") and key != "compress/fp/ppl":
            name = key.split("/")[1]
            table.add_row(name, f"{value:.3f}", f"{results[f'compress/{name}/ppl_ratio']:.3f}",
                          f"{results[f'compress/{name}/kl']:.4f}", f"{results[f'compress/{name}/top1_agreement']:.3f}")
    (console or Console()).print(table)
