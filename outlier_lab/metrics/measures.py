"""What the OutlierMonitor (and analyze.py) computes from the probe: each ``@measure`` is a
pair, its ``window`` reduction of one probe pass to partial results (``partials``) and the
function that finishes its logged values from the partials of all windows merged, with the
declarations, beside it, of the headline values that go further (history, summary, report,
emergence; see ``registry``). The activation and weight measures are here, the attention's
in ``measures_attention``. The statistics themselves are the pure functions of
``activations``, ``weights`` and ``attention``; their definitions and sources:
docs/metrics.md."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from outlier_lab.metrics import activations as A
from outlier_lab.metrics import weights as W
from outlier_lab.metrics.partials import First, Max, Rows, Sum
from outlier_lab.metrics.probe_result import ProbeResult
from outlier_lab.metrics.registry import Metric, measure
from outlier_lab.metrics.thresholds import Thresholds
from outlier_lab.metrics.tokens import CLASSES


@dataclass
class Probe:
    """One probe pass (of a window, a batch of windows, or all of them) and what the
    measures need besides it."""
    result: ProbeResult                   # what the probe captured
    model: torch.nn.Module
    positions: torch.Tensor | None = None  # (B, T) position classes (metrics.tokens), None: unknown
    thresholds: Thresholds = field(default_factory=Thresholds)
    # query domains the data module names: name -> (B, T) bool over the probe's query positions
    domains: dict[str, torch.Tensor] | None = None
    optimum: torch.Tensor | None = None  # (B, T) the true distribution's loss at each position, if known


def top_entries(x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per sequence of x (B, T, C), the signed value of its largest-|x| entry and where it is,
    (B, 2) [token, channel]: over several windows, the whole probe's largest entry is the
    largest of these (the first in (sequence, token, channel) order on a tie, as a flat argmax)."""
    flat = A.f32(x).reshape(x.shape[0], -1)
    i = flat.abs().argmax(dim=1)
    return {"value": flat.gather(1, i[:, None])[:, 0], "at": torch.stack([i // x.shape[-1], i % x.shape[-1]], dim=1)}


def massive_role_sums(h: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """(2, C) sums and counts of h's massive activations (``mask``: ``activations.massive_mask``)
    in each channel, at the first token (row 0) and at the others (row 1): what
    ``massive_mean`` replaces them with (``role_means``)."""
    x = A.f32(h) * mask
    return {"sums": torch.stack([x[:, 0].sum(0), x[:, 1:].sum(dim=(0, 1))]),
            "counts": torch.stack([mask[:, 0].sum(0), mask[:, 1:].sum(dim=(0, 1))]).float()}


def role_means(roles: dict[str, torch.Tensor]) -> torch.Tensor:
    """(2, C): the mean of each channel's massive activations at the first token and at the
    others, from ``massive_role_sums``; the other row's mean where one has none, NaN where
    neither has."""
    sums, counts = roles["sums"], roles["counts"]
    either = sums.sum(0) / counts.sum(0)
    return torch.where(counts > 0, sums / counts, either)


def _activation_window(probe: Probe) -> dict:
    t = probe.thresholds
    bounds = dict(abs_threshold=t.massive_abs, median_ratio=t.massive_ratio, token_ratio=t.token_ratio)

    def rows(values):
        return {name: Rows(v) for name, v in values.items()}

    act = []
    for h in probe.result.residual:
        channel_max, peaks = A.channel_peaks(h, probe.positions)
        values = A.activation_rows(h, **bounds)
        act.append({"rows": rows(values), "channel_max": Max(channel_max), "peaks": peaks,
                    "massive": {k: Sum(v) for k, v in massive_role_sums(h, A.massive_mask(
                        h, t.massive_abs, t.massive_ratio, values["median"])).items()},
                    "first": First(h[0].detach().clone())})  # a copy: a view would keep the whole pass alive
    down = [{"rows": rows(A.activation_rows(x, **bounds)), "channel_max": Max(A.channel_max(x)),
             "top_in": {k: Rows(v) for k, v in top_entries(x).items()},
             "top_out": {k: Rows(v) for k, v in top_entries(y).items()}}
            for x, y in zip(probe.result.down_input, probe.result.down_output)]
    return {"act": act, "down": down}


@measure(
    Metric("outliers/act/top1_over_median/max", "top1 / median |h| (max over layers)",
           column="top1/median (max)", curve=True, panel=True, emergence=100.0),
    Metric("outliers/down/top1_over_median/max", "top1 / median at the FFN down-projection input",
           column="down-proj input top1/median", curve=True, panel=True),
    Metric("outliers/act/max_abs/max", "largest |h| of the residual stream (max over layers)", curve=True),
    window=_activation_window,
)
def activation_outliers(parts: dict, thresholds: Thresholds) -> dict[str, float]:
    """Per-layer |h| statistics of the residual stream and the down-projection input
    (``activations.activation_summary``), their maxima and totals over layers; and the
    largest channel of the layer with the largest top1/median, with the classes of the
    positions that carry it (initial, strong or weak delimiter, other)."""
    out: dict[str, float] = {}
    stats = {kind: [A.activation_summary(layer["rows"]) for layer in parts[kind]] for kind in ("act", "down")}
    for kind, per_layer in stats.items():
        for layer, values in enumerate(per_layer):
            for name, value in values.items():
                out[f"outliers/{kind}/{name}/layer_{layer}"] = value
        out[f"outliers/{kind}/top1_over_median/max"] = max(s["top1_over_median"] for s in per_layer)
        out[f"outliers/{kind}/max_abs/max"] = max(s["max_abs"] for s in per_layer)
        out[f"outliers/{kind}/massive/total"] = sum(s["massive"] for s in per_layer)
        out[f"outliers/{kind}/massive_ratio/total"] = sum(s["massive_ratio"] for s in per_layer)
        out[f"outliers/{kind}/token_outliers/total"] = sum(s["token_outliers"] for s in per_layer)
    ratios = [s["top1_over_median"] for s in stats["act"]]
    worst = max(range(len(ratios)), key=lambda layer: ratios[layer])
    top = A.top_channel_of(parts["act"][worst]["channel_max"], parts["act"][worst]["peaks"])
    out.update({"outliers/act/top_channel": top["channel"], "outliers/act/top_channel_layer": worst})
    out.update({f"outliers/act/top_channel_{name}_share": share for name, share in zip(CLASSES, top["shares"])})
    return out


def _bondarenko_window(probe: Probe) -> dict:
    def rows(h):
        x = A.sequences(A.f32(h))
        return {"kurtosis": Rows(A.kurtosis_per_row(x)), "max": Rows(x.abs().amax(dim=1))}

    return {"tensors": {name: rows(h) for name, h in probe.result.tensors.items()},
            "blocks": [Rows(A.sequences(A.f32(h)).abs().amax(dim=1)) for h in probe.result.residual]}


@measure(
    Metric("outliers/act/avg_kurtosis", "average kurtosis (Bondarenko's tensor set)", column="avg kurtosis",
           curve=True, panel=True),
    Metric("outliers/act/max_inf_norm", "max inf-norm (Bondarenko's tensor set)", column="max inf-norm",
           curve=True, panel=True),
    window=_bondarenko_window,
)
def bondarenko(parts: dict, thresholds: Thresholds) -> dict[str, float]:
    """Bondarenko et al.'s figures over their tensor set (every block output, both norm
    outputs of each block, the attention and FFN output projections' outputs, the final
    norm's output), each per sequence (kurtosis, ``activations.kurtosis``; inf-norm, the
    sequence's largest |h|) averaged over sequences; max_layer_inf_norm over the block
    outputs only. A tensor none of whose sequences has a spread (an all-zero output) has no
    kurtosis and is left out of the average."""
    kurt = [k for k in (A.mean_of_defined(t["kurtosis"]) for t in parts["tensors"].values()) if not math.isnan(k)]
    return {"outliers/act/avg_kurtosis": math.fsum(kurt) / len(kurt) if kurt else math.nan,
            "outliers/act/max_kurtosis": max(kurt, default=math.nan),
            "outliers/act/max_inf_norm": max(t["max"].mean().item() for t in parts["tensors"].values()),
            "outliers/act/max_layer_inf_norm": max(m.mean().item() for m in parts["blocks"])}


def _weight_window(probe: Probe) -> dict:
    # the weights are the model's, the same in every window: the first window's references
    return {"down_weights": First(probe.result.down_weights), "linear_weights": First(probe.result.linear_weights),
            "act_max": [Max(A.channel_max(x)) for x in probe.result.down_input]}


@measure(Metric("outliers/weight/down_proj_col_ratio/max", "down-projection column ratio max|W|/mean|W| (max)",
                curve=True), window=_weight_window)
def weight_outliers(parts: dict, thresholds: Thresholds) -> dict[str, float]:
    """The seed's column ratio of every Linear, the FFN down projections singled out, and
    whether the top down-projection input channel is its top weight column."""
    out: dict[str, float] = {}
    down = [W.weight_stats(w) for w in parts["down_weights"]]
    for layer, (stats, weight) in enumerate(zip(down, parts["down_weights"])):
        out[f"outliers/weight/down_proj_col_ratio/layer_{layer}"] = stats["col_ratio"]
        out[f"outliers/weight/down_proj_col_ratio_median/layer_{layer}"] = stats["col_ratio_median"]
        align = W.channel_alignment(parts["act_max"][layer], weight)
        out[f"outliers/weight/down_proj_aligned/layer_{layer}"] = float(align["aligned"])
    out["outliers/weight/down_proj_col_ratio/max"] = max(s["col_ratio"] for s in down)
    out["outliers/weight/down_proj_kurtosis/max"] = max(s["kurtosis"] for s in down)
    out["outliers/weight/down_proj_aligned/frac"] = sum(
        out[f"outliers/weight/down_proj_aligned/layer_{layer}"] for layer in range(len(down))) / len(down)
    linear_stats = [W.weight_stats(w) for w in parts["linear_weights"]]
    for name in ("col_ratio", "row_ratio", "kurtosis"):
        out[f"outliers/weight/{name}/max"] = max(s[name] for s in linear_stats)
    return out
