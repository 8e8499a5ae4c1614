"""What the OutlierMonitor (and analyze.py) computes from one probe pass: each ``@measure``
function turns the captured tensors into logged values, and declares beside it the headline
values that go further (history, summary, report, emergence; see ``registry``).
Definitions of the underlying statistics: ``functions`` and docs/metrics.md."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

from outliers.metrics import functions as F
from outliers.metrics.registry import Metric, measure


@dataclass
class Probe:
    """One probe pass and what the measures need besides it."""
    result: object                     # outliers.probes.ProbeResult: residual, down_input, attention
    model: torch.nn.Module
    tokens: torch.Tensor | None = None  # the probed ids (B, T), for token classes
    massive_abs: float = 100.0
    massive_ratio: float = 1000.0
    token_ratio: float = 1000.0
    sink_eps: float = 0.3

    @cached_property
    def activation_stats(self) -> dict[str, list[dict[str, float]]]:
        """Per layer, the ``functions.activation_stats`` of the residual ("act") and of the FFN
        down-projection input ("down")."""
        thresholds = dict(abs_threshold=self.massive_abs, median_ratio=self.massive_ratio,
                          token_ratio=self.token_ratio)
        return {kind: [F.activation_stats(h, **thresholds) for h in tensors]
                for kind, tensors in (("act", self.result.residual), ("down", self.result.down_input))}


@measure(
    Metric("outliers/act/top1_over_median/max", "top1 / median |h| (max over layers)",
           column="top1/median (max)", curve=True, panel=True, emergence=100.0),
    Metric("outliers/down/top1_over_median/max", "top1 / median at the FFN down-projection input",
           column="down-proj input top1/median", curve=True, panel=True),
)
def activation_outliers(probe: Probe) -> dict[str, float]:
    """Per-layer |h| statistics of the residual stream and the down-projection input, and
    their maxima and totals over layers."""
    out: dict[str, float] = {}
    for kind, per_layer in probe.activation_stats.items():
        for layer, stats in enumerate(per_layer):
            for name, value in stats.items():
                out[f"outliers/{kind}/{name}/layer_{layer}"] = value
        out[f"outliers/{kind}/top1_over_median/max"] = max(s["top1_over_median"] for s in per_layer)
        out[f"outliers/{kind}/massive/total"] = sum(s["massive"] for s in per_layer)
        out[f"outliers/{kind}/massive_ratio/total"] = sum(s["massive_ratio"] for s in per_layer)
        out[f"outliers/{kind}/kurtosis/max"] = max(s["kurtosis"] for s in per_layer)
    return out


@measure(
    Metric("outliers/act/avg_kurtosis", "average kurtosis", column="avg kurtosis", curve=True, panel=True),
    Metric("outliers/act/max_inf_norm", "max inf-norm of the residual", column="max inf-norm", curve=True,
           panel=True),
)
def bondarenko(probe: Probe) -> dict[str, float]:
    """Bondarenko et al.: kurtosis averaged over all tracked tensors, inf norm max over block outputs."""
    kurt = [s["kurtosis"] for per_layer in probe.activation_stats.values() for s in per_layer]
    return {"outliers/act/avg_kurtosis": sum(kurt) / len(kurt),
            "outliers/act/max_inf_norm": max(F.inf_norm(h) for h in probe.result.residual)}


@measure()
def top_channel(probe: Probe) -> dict[str, float]:
    """The largest channel of the layer with the largest top1/median, and which tokens carry it."""
    ratios = [s["top1_over_median"] for s in probe.activation_stats["act"]]
    worst = max(range(len(ratios)), key=lambda layer: ratios[layer])
    top = F.top_channels(probe.result.residual[worst], k=1, tokens=probe.tokens)[0]
    return {"outliers/act/top_channel": top["channel"], "outliers/act/top_channel_layer": worst,
            "outliers/act/top_channel_initial_share": top["share_initial"],
            "outliers/act/top_channel_delimiter_share": top["share_delimiter"]}


@measure(Metric("outliers/weight/down_proj_col_ratio/max", "down-projection weight column ratio (max)",
                curve=True))
def weight_outliers(probe: Probe) -> dict[str, float]:
    """Weight statistics of every Linear, the FFN down projections singled out, and whether
    the top down-projection input channel is its top weight column."""
    out: dict[str, float] = {}
    model = probe.model
    linear_stats = {m: F.weight_stats(m.weight) for m in model.modules() if isinstance(m, torch.nn.Linear)}
    down_stats = []
    for layer, block in enumerate(model.transformer.h):
        stats = linear_stats[block.mlp.c_proj]
        down_stats.append(stats)
        out[f"outliers/weight/down_proj_col_ratio/layer_{layer}"] = stats["col_ratio"]
        align = F.channel_alignment(probe.result.down_input[layer], block.mlp.c_proj.weight)
        out[f"outliers/weight/down_proj_aligned/layer_{layer}"] = float(align["aligned"])
    out["outliers/weight/down_proj_col_ratio/max"] = max(s["col_ratio"] for s in down_stats)
    out["outliers/weight/down_proj_kurtosis/max"] = max(s["kurtosis"] for s in down_stats)
    out["outliers/weight/down_proj_aligned/frac"] = sum(
        out[f"outliers/weight/down_proj_aligned/layer_{l}"] for l in range(len(down_stats))) / len(down_stats)
    for name in ("col_ratio", "row_ratio", "kurtosis"):
        out[f"outliers/weight/{name}/max"] = max(s[name] for s in linear_stats.values())
    return out


@measure(
    Metric("outliers/attn/sink_rate", "sink rate", column="sink rate", curve=True, panel=True, emergence=0.5),
    Metric("outliers/attn/first_token_share/max", "first-token attention share (max)",
           column="first-token share", curve=True, panel=True),
    Metric("outliers/attn/null_mass/mean", "null mass (mean over layers)", curve=True),
)
def attention_outliers(probe: Probe) -> dict[str, float]:
    """First-token share, sink rate, entropy, max logit, null mass, outlier keys, and the
    scale or gate values of the variants that have them."""
    out: dict[str, float] = {}
    shares, null, outlier_keys = [], [], 0
    for layer, extras in enumerate(probe.result.attention):
        p = extras["probs"]
        share = F.first_token_share(p)
        shares.append(share)
        out[f"outliers/attn/first_token_share/layer_{layer}"] = share.mean().item()
        # differential attention's A1 - lam A2 has negative entries; entropy is taken over the positive part
        out[f"outliers/attn/entropy/layer_{layer}"] = F.attention_entropy(p.clamp(min=0)).mean().item()
        out[f"outliers/attn/max_logit/layer_{layer}"] = extras["max_logit"].max().item()
        layer_null = F.null_mass(p).mean().item()
        null.append(layer_null)
        out[f"outliers/attn/null_mass/layer_{layer}"] = layer_null
        outlier_keys += len(F.attention_outlier_keys(p))
        for name in ("scale", "gate"):
            if name in extras:
                for stat, value in F.value_stats(extras[name]).items():
                    out[f"outliers/attn/{name}/{stat}/layer_{layer}"] = value
    all_shares = torch.cat([s.flatten() for s in shares])
    out["outliers/attn/first_token_share/max"] = all_shares.max().item()
    out["outliers/attn/sink_rate"] = F.sink_rate(all_shares, eps=probe.sink_eps)
    out["outliers/attn/outlier_keys"] = outlier_keys
    out["outliers/attn/null_mass/mean"] = sum(null) / len(null)
    out["outliers/attn/max_logit/max"] = max(v for k, v in out.items() if "/max_logit/layer_" in k)
    return out
