"""The outlier probe of a Hugging Face causal LM: the same ``ProbeResult`` as our GPT's probe
(``ours``), so every ``@measure`` and figure runs on it unchanged.

The model runs one sequence at a time (a 1B model's eager attention over a batch would
hold every layer's (B, H, T, T) weights at once) and the captures are concatenated."""

from __future__ import annotations

import torch
from torch import nn

from outlier_lab.errors import ConfigError
from outlier_lab.metrics import Probe, run_measures
from outlier_lab.metrics.tokens import position_classes
from outlier_lab.metrics.probe_result import ProbeResult
from outlier_lab.probe.capture import probe_session
from outlier_lab.probe.hf_attention import HeadTap, use_probe_attention
from outlier_lab.probe.families import Family


def prepare(model: nn.Module, family: Family) -> list[HeadTap]:
    """Switch ``model`` to the probe attention and give each of its attention layers a tap
    (idle until recording or editing); returns the taps, by layer."""
    use_probe_attention(model)
    taps = []
    for attention in family.attentions(model):
        attention.outlier_tap = HeadTap()
        taps.append(attention.outlier_tap)
    return taps


@torch.no_grad()
def probe_hf(model: nn.Module, family: Family, idx: torch.Tensor) -> ProbeResult:
    """Run ``model`` (prepared with ``prepare``) on token ids ``idx`` (B, T) in eval mode, one
    sequence at a time, and return what the probe points held (family.watched, the down
    projections' inputs, every attention layer's weights, max logit and values)."""
    taps = [attention.outlier_tap for attention in family.attentions(model)]

    def record(on: bool) -> None:
        for tap in taps:
            tap.record, tap.calls = on, []

    with probe_session(model, family, record) as collect:
        device = next(model.parameters()).device
        for row in idx:
            model(input_ids=row[None].to(device), use_cache=False)
        result = collect()
        silent = [layer for layer, tap in enumerate(taps) if not tap.calls]
        if silent:
            raise ConfigError(f"{type(model).__name__} did not compute attention through transformers' attention "
                              f"interface in layers {silent}: its attention weights cannot be read (it needs eager "
                              "attention)")
        for tap in taps:
            extras = {name: torch.cat([call[name] for call in tap.calls]) for name in tap.calls[0]}
            extras["null_mass"] = extras["probs"].new_zeros(extras["probs"].shape[:-1])  # softmax: rows sum to 1
            result.attention.append(extras)
    return result


def measure_hf(model: nn.Module, family: Family, idx: torch.Tensor, token_classes: torch.Tensor | None = None,
               **probe_fields) -> tuple[ProbeResult, dict[str, float]]:
    """``probe_hf`` and every declared measure of it: ``ours.measure_model`` for a Hugging Face
    model; probe_fields: ``thresholds`` (a metrics.Thresholds) and the data's domains."""
    result = probe_hf(model, family, idx)
    positions = None if token_classes is None else position_classes(idx.cpu(), token_classes)
    return result, run_measures(Probe(result, model, positions, **probe_fields))
