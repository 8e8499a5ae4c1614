"""The outlier probe of a Hugging Face causal LM: the same ``ProbeResult`` as our GPT's probe
(``ours``), so every ``@measure`` and figure runs on it unchanged.

The model runs one sequence at a time (a 1B model's eager attention over a batch would
hold every layer's (B, H, T, T) weights at once); ``measure_hf`` reduces each window's
captures before the next (``stream``), so memory does not grow with the windows."""

from __future__ import annotations

import torch
from torch import nn

from outlier_lab.errors import ConfigError
from outlier_lab.metrics.probe_result import ProbeResult
from outlier_lab.probe.capture import probe_session
from outlier_lab.probe.hf_attention import HeadTap, use_probe_attention
from outlier_lab.probe.families import Family
from outlier_lab.probe.stream import measure_stream


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
               windows_per_pass: int | None = 1, on_pass=None, **probe_fields) -> tuple[dict, dict[str, float]]:
    """``ours.measure_model`` for a Hugging Face model (prepared with ``prepare``): every declared
    measure of ``probe_hf``, one window at a time unless told otherwise, and the partials
    they came from; probe_fields: ``thresholds`` (a metrics.Thresholds)."""
    return measure_stream(lambda ids: probe_hf(model, family, ids), model, idx, token_classes, windows_per_pass,
                          on_pass, **probe_fields)
