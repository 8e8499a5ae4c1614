"""What the OutlierMonitor (and analyze.py) computes from one probe pass: each ``@measure``
function turns the captured tensors into logged values and declares, beside it, the
headline values that go further (history, summary, report, emergence; see ``registry``).
The statistics themselves are the pure functions of ``activations``, ``weights`` and
``attention``; their definitions and sources: docs/metrics.md."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property

import torch

from outlier_lab.metrics import activations as A
from outlier_lab.metrics import attention as T
from outlier_lab.metrics import weights as W
from outlier_lab.metrics.probe_result import ProbeResult
from outlier_lab.metrics.registry import Metric, measure
from outlier_lab.metrics.thresholds import Thresholds
from outlier_lab.metrics.tokens import CLASSES, INITIAL

# probe extras that are not summarised as value statistics
TENSOR_EXTRAS = {"probs", "null_mass", "max_logit", "values"}


@dataclass
class Probe:
    """One probe pass and what the measures need besides it."""
    result: ProbeResult                   # what the probe captured
    model: torch.nn.Module
    positions: torch.Tensor | None = None  # (B, T) position classes (metrics.tokens), None: unknown
    thresholds: Thresholds = field(default_factory=Thresholds)
    # query domains the data module names: name -> (B, T) bool over the probe's query positions
    domains: dict[str, torch.Tensor] | None = None
    optimum: torch.Tensor | None = None  # (B, T) the true distribution's loss at each position, if known

    @cached_property
    def activation_stats(self) -> dict[str, list[dict[str, float]]]:
        """Per layer, ``activations.activation_stats`` of the residual stream ("act") and of
        the FFN down-projection input ("down")."""
        thresholds = dict(abs_threshold=self.thresholds.massive_abs, median_ratio=self.thresholds.massive_ratio,
                          token_ratio=self.thresholds.token_ratio)
        return {kind: [A.activation_stats(h, **thresholds) for h in tensors]
                for kind, tensors in (("act", self.result.residual), ("down", self.result.down_input))}


@measure(
    Metric("outliers/act/top1_over_median/max", "top1 / median |h| (max over layers)",
           column="top1/median (max)", curve=True, panel=True, emergence=100.0),
    Metric("outliers/down/top1_over_median/max", "top1 / median at the FFN down-projection input",
           column="down-proj input top1/median", curve=True, panel=True),
    Metric("outliers/act/max_abs/max", "largest |h| of the residual stream (max over layers)", curve=True),
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
        out[f"outliers/{kind}/max_abs/max"] = max(s["max_abs"] for s in per_layer)
        out[f"outliers/{kind}/massive/total"] = sum(s["massive"] for s in per_layer)
        out[f"outliers/{kind}/massive_ratio/total"] = sum(s["massive_ratio"] for s in per_layer)
        out[f"outliers/{kind}/token_outliers/total"] = sum(s["token_outliers"] for s in per_layer)
    return out


@measure(
    Metric("outliers/act/avg_kurtosis", "average kurtosis (Bondarenko's tensor set)", column="avg kurtosis",
           curve=True, panel=True),
    Metric("outliers/act/max_inf_norm", "max inf-norm (Bondarenko's tensor set)", column="max inf-norm",
           curve=True, panel=True),
)
def bondarenko(probe: Probe) -> dict[str, float]:
    """Bondarenko et al.'s figures over their tensor set (every block output, both norm
    outputs of each block, the attention and FFN output projections' outputs, the final
    norm's output); max_layer_inf_norm over the block outputs only. A tensor none of whose
    sequences has a spread (an all-zero output) has no kurtosis and is left out of the average."""
    tensors = probe.result.tensors.values()
    kurt = [k for k in (A.kurtosis(h) for h in tensors) if not math.isnan(k)]  # NaN: no sequence has a spread
    return {"outliers/act/avg_kurtosis": math.fsum(kurt) / len(kurt) if kurt else math.nan,
            "outliers/act/max_kurtosis": max(kurt, default=math.nan),
            "outliers/act/max_inf_norm": max(A.inf_norm(h) for h in tensors),
            "outliers/act/max_layer_inf_norm": max(A.inf_norm(h) for h in probe.result.residual)}


@measure()
def top_channel(probe: Probe) -> dict[str, float]:
    """The largest channel of the layer with the largest top1/median, and the classes of the
    positions that carry it (initial, strong or weak delimiter, other)."""
    ratios = [s["top1_over_median"] for s in probe.activation_stats["act"]]
    worst = max(range(len(ratios)), key=lambda layer: ratios[layer])
    top = A.top_channel(probe.result.residual[worst], probe.positions)
    out = {"outliers/act/top_channel": top["channel"], "outliers/act/top_channel_layer": worst}
    out.update({f"outliers/act/top_channel_{name}_share": share for name, share in zip(CLASSES, top["shares"])})
    return out


@measure(Metric("outliers/weight/down_proj_col_ratio/max", "down-projection column ratio max|W|/mean|W| (max)",
                curve=True))
def weight_outliers(probe: Probe) -> dict[str, float]:
    """The seed's column ratio of every Linear, the FFN down projections singled out, and
    whether the top down-projection input channel is its top weight column."""
    out: dict[str, float] = {}
    down = [W.weight_stats(w) for w in probe.result.down_weights]
    for layer, (stats, weight) in enumerate(zip(down, probe.result.down_weights)):
        out[f"outliers/weight/down_proj_col_ratio/layer_{layer}"] = stats["col_ratio"]
        out[f"outliers/weight/down_proj_col_ratio_median/layer_{layer}"] = stats["col_ratio_median"]
        align = W.channel_alignment(probe.result.down_input[layer], weight)
        out[f"outliers/weight/down_proj_aligned/layer_{layer}"] = float(align["aligned"])
    out["outliers/weight/down_proj_col_ratio/max"] = max(s["col_ratio"] for s in down)
    out["outliers/weight/down_proj_kurtosis/max"] = max(s["kurtosis"] for s in down)
    out["outliers/weight/down_proj_aligned/frac"] = sum(
        out[f"outliers/weight/down_proj_aligned/layer_{layer}"] for layer in range(len(down))) / len(down)
    linear_stats = [W.weight_stats(w) for w in probe.result.linear_weights]
    for name in ("col_ratio", "row_ratio", "kurtosis"):
        out[f"outliers/weight/{name}/max"] = max(s[name] for s in linear_stats)
    return out


@measure(
    Metric("outliers/attn/sink_rate", "sink rate (Gu et al.)", column="sink rate", curve=True, panel=True,
           emergence=0.5, binary_above=0.5),
    Metric("outliers/attn/first_token_share/max", "first-token attention share (max)",
           column="first-token share", curve=True, panel=True),
    Metric("outliers/attn/null_mass/mean", "null mass (mean over layers)", curve=True),
)
def attention_outliers(probe: Probe) -> dict[str, float]:
    """First-token share, Gu et al.'s sink rate, entropy, max logit, null mass, the seed's
    attention-outlier keys by class, and the variant's own extras (scale, gate, slot weight,
    lambda) as mean / min / max."""
    out: dict[str, float] = {}
    shares, scores, null = [], [], []
    key_counts = torch.zeros(len(CLASSES), dtype=torch.long)
    for layer, extras in enumerate(probe.result.attention):
        p = extras["probs"]
        share = T.first_token_share(p)
        shares.append(share)
        scores.append(T.sink_scores(p, probe.thresholds.sink_tokens))
        out[f"outliers/attn/first_token_share/layer_{layer}"] = share.mean().item()
        out[f"outliers/attn/sink_rate/layer_{layer}"] = T.sink_rate(scores[-1], probe.thresholds.sink_eps)
        # differential attention's A1 - lam A2 has negative entries; entropy is taken over the positive part
        out[f"outliers/attn/entropy/layer_{layer}"] = T.attention_entropy(p.clamp(min=0)).mean().item()
        out[f"outliers/attn/max_logit/layer_{layer}"] = extras["max_logit"].max().item()
        # a null mass is defined only where the variant reports one (not for differential's 1 - lambda)
        null.append(T.null_mass(extras["null_mass"]).mean().item() if "null_mass" in extras else math.nan)
        out[f"outliers/attn/null_mass/layer_{layer}"] = null[-1]
        keys = T.outlier_keys(p)
        positions = probe.positions if probe.positions is not None else _initial_or_other(keys)
        counts = torch.bincount(positions.to(keys.device)[keys], minlength=len(CLASSES)).cpu()
        key_counts += counts
        for name, count in zip(CLASSES, counts.tolist()):
            out[f"outliers/attn/outlier_keys/{name}/layer_{layer}"] = count
        for name, value in extras.items():
            if name not in TENSOR_EXTRAS:
                for stat, v in T.value_stats(value).items():
                    out[f"outliers/attn/{name}/{stat}/layer_{layer}"] = v
    out["outliers/attn/first_token_share/max"] = torch.cat(shares).max().item()
    out["outliers/attn/sink_rate"] = T.sink_rate(torch.stack(scores), probe.thresholds.sink_eps)
    out["outliers/attn/outlier_keys"] = int(key_counts.sum())
    out.update({f"outliers/attn/outlier_keys/{name}": int(c) for name, c in zip(CLASSES, key_counts.tolist())})
    out["outliers/attn/null_mass/mean"] = math.fsum(null) / len(null)
    out["outliers/attn/max_logit/max"] = max(v for k, v in out.items() if "/max_logit/layer_" in k)
    return out


def _initial_or_other(keys: torch.Tensor) -> torch.Tensor:
    """Position classes without a tokenizer: position 0 is initial, the rest other."""
    positions = torch.full(keys.shape, CLASSES.index("other"), dtype=torch.long, device=keys.device)
    positions[:, 0] = INITIAL
    return positions


@measure(Metric("outliers/act/residual_peak/max", "residual-state peak ||h_0|| / median ||h_j|| (max over layers)",
                column="residual peak (max)", curve=True, panel=True))
def extreme_tokens(probe: Probe) -> dict[str, float]:
    """Guo et al. 2024's three extreme-token phenomena on the first token, per layer: the
    attention sink (first_token_share, above), the value-state drain ||v_0|| / median_j ||v_j||
    (mean over sequences and heads, and its minimum over heads: a drain is a small ratio) and
    the residual-state peak ||h_0|| / median_j ||h_j|| of the block output (mean over sequences)."""
    out: dict[str, float] = {}
    for layer, (extras, h) in enumerate(zip(probe.result.attention, probe.result.residual)):
        drain = A.norm_ratio_to_others(extras["values"]).mean(dim=0)  # (H,)
        out[f"outliers/attn/value_drain/layer_{layer}"] = drain.mean().item()
        out[f"outliers/attn/value_drain_min/layer_{layer}"] = drain.min().item()
        out[f"outliers/act/residual_peak/layer_{layer}"] = A.norm_ratio_to_others(h).mean().item()
    out["outliers/act/residual_peak/max"] = max(out[f"outliers/act/residual_peak/layer_{layer}"]
                                                for layer in range(len(probe.result.residual)))
    return out


@measure(
    Metric("outliers/domain/{domain}/first_token_share", "first-token share, {domain} queries (max)",
           column="first-token share ({domain})", curve=True, panel=True),
    Metric("outliers/domain/{domain}/sink_rate", "sink rate, {domain} queries", column="sink rate ({domain})",
           curve=True, binary_above=0.5),
    Metric("outliers/domain/{domain}/null_mass", "null mass, {domain} queries", curve=True),
    Metric("outliers/domain/{domain}/entropy", "attention entropy, {domain} queries", curve=True),
    Metric("outliers/domain/{domain}/loss", "probe loss, {domain} queries", curve=True),
    Metric("outliers/domain/{domain}/excess_loss", "probe loss above the optimum, {domain} queries",
           column="excess loss ({domain})", curve=True, panel=True),
)
def query_domains(probe: Probe) -> dict[str, float]:
    """The attention statistics above restricted to the queries of each domain the data names
    (nothing when it names none): first-token share (max over layers and heads, and per layer
    the mean over heads), sink rate over (sequence, layer, head), null mass and entropy (means
    over layers), the probe's next-token loss there and, where the data knows its optimum, the
    excess over it."""
    out: dict[str, float] = {}
    for name, queries in (probe.domains or {}).items():
        prefix = f"outliers/domain/{name}"
        shares, scores, null, entropy = [], [], [], []
        for layer, extras in enumerate(probe.result.attention):
            p = extras["probs"]
            q = queries.to(p.device)
            shares.append(T.first_token_share(p, q))
            out[f"{prefix}/first_token_share/layer_{layer}"] = shares[-1].mean().item()
            scores.append(T.sink_scores(p, probe.thresholds.sink_tokens, q))
            entropy.append(T.attention_entropy(p.clamp(min=0), q).mean().item())
            null.append(T.null_mass(extras["null_mass"], q).mean().item() if "null_mass" in extras else math.nan)
            for extra, value in extras.items():  # per-query values (scale, gate, slot weight): their mean here
                rows = None if extra in TENSOR_EXTRAS else _per_query(value, *p.shape[:3])
                if rows is not None:
                    out[f"{prefix}/{extra}/layer_{layer}"] = (rows * q).sum().item() / max(int(q.sum()), 1)
        out[f"{prefix}/first_token_share"] = torch.cat(shares).max().item()
        out[f"{prefix}/sink_rate"] = T.sink_rate(torch.stack(scores), probe.thresholds.sink_eps)
        out[f"{prefix}/null_mass"] = math.fsum(null) / len(null)
        out[f"{prefix}/entropy"] = math.fsum(entropy) / len(entropy)
        loss = probe.result.token_loss.to(queries.device)
        counted = queries & ~torch.isnan(loss)  # the last position has no target in the probe
        out[f"{prefix}/loss"] = loss[counted].mean().item() if counted.any() else math.nan
        if probe.optimum is not None:
            excess = loss - probe.optimum.to(loss.device, loss.dtype)
            out[f"{prefix}/excess_loss"] = excess[counted].mean().item() if counted.any() else math.nan
    return out


def _per_query(value: torch.Tensor, batch: int, heads: int, length: int) -> torch.Tensor | None:
    """(B, T) mean of a probe extra over everything but the sequence and query axes, for the
    layouts the variants use, (B, H, T, ...) or (B, T, ...); None for a layer constant (one
    number, e.g. differential attention's lambda), which has no per-query value. Any other
    shape is an error, never a metric that silently goes missing from the domain table."""
    if value.dim() >= 3 and tuple(value.shape[:3]) == (batch, heads, length):
        return value.float().transpose(1, 2).reshape(batch, length, -1).mean(-1)
    if value.dim() >= 2 and tuple(value.shape[:2]) == (batch, length):
        return value.float().reshape(batch, length, -1).mean(-1)
    if value.numel() == 1:
        return None
    raise RuntimeError(f"a probe extra of shape {tuple(value.shape)} is neither per query ((B, H, T, ...) or "
                       f"(B, T, ...) with B={batch}, H={heads}, T={length}) nor one number per layer: "
                       "give it one of these layouts in the variant's attend")
