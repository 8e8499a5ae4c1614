"""The attention measures of the probe (the activation and weight ones: ``measures``), each a
``window`` reduction to partial results and the function that finishes its values from the
partials of all windows merged: the first-token share, Gu et al.'s sink rate and the
attention statistics, Guo et al.'s extreme-token phenomena, and all of them per query domain."""

from __future__ import annotations

import math

import torch

from outlier_lab.metrics import activations as A
from outlier_lab.metrics import attention as T
from outlier_lab.metrics.measures import Probe
from outlier_lab.metrics.partials import First, Max, Min, Rows, Sum
from outlier_lab.metrics.registry import Metric, measure
from outlier_lab.metrics.thresholds import Thresholds
from outlier_lab.metrics.tokens import CLASSES, INITIAL

# probe extras that are not summarised as value statistics
TENSOR_EXTRAS = {"probs", "null_mass", "max_logit", "values"}
FIGURE_TOKENS = 64  # the attention maps the figures draw: the first window's first tokens


def _sums(pair: tuple[torch.Tensor, torch.Tensor]) -> dict[str, Sum]:
    return {"sum": Sum(pair[0]), "count": Sum(pair[1])}


def _mean(sums: dict[str, torch.Tensor]) -> torch.Tensor:
    return sums["sum"] / sums["count"]


def _value_parts(value: torch.Tensor) -> dict:
    x = A.f32(value)
    return {"mean": _sums((x.sum(), x.new_tensor(float(x.numel())))), "min": Min(x.min()), "max": Max(x.max())}


def _attention_window(probe: Probe) -> list[dict]:
    # copies (clone), never views, of the captures: a view would keep the whole pass alive
    layers = []
    for extras in probe.result.attention:
        p = extras["probs"]
        keys = T.outlier_keys(p)
        positions = probe.positions if probe.positions is not None else _initial_or_other(keys)
        counts = torch.bincount(positions.to(keys.device)[keys], minlength=len(CLASSES)).cpu()
        layer = {"share": _sums(T.first_token_sums(p)), "sink": Rows(T.sink_scores(p, probe.thresholds.sink_tokens)),
                 # differential attention's A1 - lam A2 has negative entries; entropy is taken over the positive part
                 "entropy": _sums(T.entropy_sums(p.clamp(min=0))), "max_logit": Max(extras["max_logit"].max()),
                 "keys": Sum(counts), "map": First(p[0, :, :FIGURE_TOKENS, :FIGURE_TOKENS].detach().clone()),
                 "extras": {name: _value_parts(v) for name, v in extras.items() if name not in TENSOR_EXTRAS}}
        if "null_mass" in extras:  # defined only where the variant reports one (not for differential's 1 - lambda)
            layer["null"] = _sums(T.null_mass_sums(extras["null_mass"]))
        layers.append(layer)
    return layers


def head_shares(parts: list[dict]) -> list[torch.Tensor]:
    """Per layer, the (H,) first-token share of each head, from ``attention_outliers``' partials."""
    return [_mean(layer["share"]) for layer in parts]


def first_maps(parts: list[dict]) -> list[torch.Tensor]:
    """Per layer, the (H, t, t) attention of the first window's first ``FIGURE_TOKENS`` tokens."""
    return [layer["map"] for layer in parts]


def head_sink_scores(parts: list[dict]) -> list[torch.Tensor]:
    """Per layer, each head's Gu et al. sink score averaged over the probe's sequences (H,)."""
    return [layer["sink"].nanmean(0) for layer in parts]


@measure(
    Metric("outliers/attn/sink_rate", "sink rate (Gu et al.)", column="sink rate", curve=True, panel=True,
           emergence=0.5, binary_above=0.5),
    Metric("outliers/attn/first_token_share/max", "first-token attention share (max)",
           column="first-token share", curve=True, panel=True),
    Metric("outliers/attn/null_mass/mean", "null mass (mean over layers)", curve=True),
    window=_attention_window,
)
def attention_outliers(parts: list[dict], thresholds: Thresholds) -> dict[str, float]:
    """First-token share, Gu et al.'s sink rate, entropy, max logit, null mass, the seed's
    attention-outlier keys by class, and the variant's own extras (scale, gate, slot weight,
    lambda) as mean / min / max."""
    out: dict[str, float] = {}
    shares, null = head_shares(parts), []
    key_counts = torch.zeros(len(CLASSES), dtype=torch.long)
    for layer, part in enumerate(parts):
        out[f"outliers/attn/first_token_share/layer_{layer}"] = shares[layer].mean().item()
        out[f"outliers/attn/sink_rate/layer_{layer}"] = T.sink_rate(part["sink"], thresholds.sink_eps)
        out[f"outliers/attn/entropy/layer_{layer}"] = _mean(part["entropy"]).mean().item()
        out[f"outliers/attn/max_logit/layer_{layer}"] = part["max_logit"].item()
        null.append(_mean(part["null"]).mean().item() if "null" in part else math.nan)
        out[f"outliers/attn/null_mass/layer_{layer}"] = null[-1]
        key_counts += part["keys"]
        for name, count in zip(CLASSES, part["keys"].tolist()):
            out[f"outliers/attn/outlier_keys/{name}/layer_{layer}"] = count
        for name, stats in part["extras"].items():
            for stat, v in (("mean", _mean(stats["mean"])), ("min", stats["min"]), ("max", stats["max"])):
                out[f"outliers/attn/{name}/{stat}/layer_{layer}"] = v.item()
    out["outliers/attn/first_token_share/max"] = torch.cat(shares).max().item()
    out["outliers/attn/sink_rate"] = T.sink_rate(torch.stack([part["sink"] for part in parts]), thresholds.sink_eps)
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


def _extreme_window(probe: Probe) -> dict:
    return {"drain": [Rows(A.norm_ratio_to_others(extras["values"])) for extras in probe.result.attention],
            "peak": [Rows(A.norm_ratio_to_others(h)) for h in probe.result.residual]}


@measure(Metric("outliers/act/residual_peak/max", "residual-state peak ||h_0|| / median ||h_j|| (max over layers)",
                column="residual peak (max)", curve=True, panel=True), window=_extreme_window)
def extreme_tokens(parts: dict, thresholds: Thresholds) -> dict[str, float]:
    """Guo et al. 2024's three extreme-token phenomena on the first token, per layer: the
    attention sink (first_token_share, above), the value-state drain ||v_0|| / median_j ||v_j||
    (mean over sequences and heads, and its minimum over heads: a drain is a small ratio) and
    the residual-state peak ||h_0|| / median_j ||h_j|| of the block output (mean over sequences)."""
    out: dict[str, float] = {}
    for layer, (drain, peak) in enumerate(zip(parts["drain"], parts["peak"])):
        per_head = drain.mean(dim=0)  # (H,)
        out[f"outliers/attn/value_drain/layer_{layer}"] = per_head.mean().item()
        out[f"outliers/attn/value_drain_min/layer_{layer}"] = per_head.min().item()
        out[f"outliers/act/residual_peak/layer_{layer}"] = peak.mean().item()
    out["outliers/act/residual_peak/max"] = max(out[f"outliers/act/residual_peak/layer_{layer}"]
                                                for layer in range(len(parts["peak"])))
    return out


def _domain_window(probe: Probe) -> dict:
    out = {}
    for name, queries in (probe.domains or {}).items():
        layers = []
        for extras in probe.result.attention:
            p = extras["probs"]
            q = queries.to(p.device)
            layer = {"share": _sums(T.first_token_sums(p, q)),
                     "sink": Rows(T.sink_scores(p, probe.thresholds.sink_tokens, q)),
                     "entropy": _sums(T.entropy_sums(p.clamp(min=0), q)), "extras": {}}
            if "null_mass" in extras:
                layer["null"] = _sums(T.null_mass_sums(extras["null_mass"], q))
            for extra, value in extras.items():  # per-query values (scale, gate, slot weight): their mean here
                rows = None if extra in TENSOR_EXTRAS else _per_query(value, *p.shape[:3])
                if rows is not None:
                    layer["extras"][extra] = _sums(((rows * q).sum(), q.sum().float()))
            layers.append(layer)
        loss = probe.result.token_loss.to(queries.device)
        counted = queries & ~torch.isnan(loss)  # the last position has no target in the probe
        out[name] = {"layers": layers, "loss": _sums((loss[counted].sum(), counted.sum().float()))}
        if probe.optimum is not None:
            excess = loss - probe.optimum.to(loss.device, loss.dtype)
            out[name]["excess"] = _sums((excess[counted].sum(), counted.sum().float()))
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
    window=_domain_window,
)
def query_domains(parts: dict, thresholds: Thresholds) -> dict[str, float]:
    """The attention statistics above restricted to the queries of each domain the data names
    (nothing when it names none): first-token share (max over layers and heads, and per layer
    the mean over heads), sink rate over (sequence, layer, head), null mass and entropy (means
    over layers), the probe's next-token loss there and, where the data knows its optimum, the
    excess over it."""
    out: dict[str, float] = {}
    for name, domain in parts.items():
        prefix = f"outliers/domain/{name}"
        shares, null, entropy = [], [], []
        for layer, part in enumerate(domain["layers"]):
            shares.append(_mean(part["share"]))
            out[f"{prefix}/first_token_share/layer_{layer}"] = shares[-1].mean().item()
            entropy.append(_mean(part["entropy"]).mean().item())
            null.append(_mean(part["null"]).mean().item() if "null" in part else math.nan)
            for extra, sums in part["extras"].items():
                out[f"{prefix}/{extra}/layer_{layer}"] = (sums["sum"] / sums["count"].clamp_min(1)).item()
        out[f"{prefix}/first_token_share"] = torch.cat(shares).max().item()
        out[f"{prefix}/sink_rate"] = T.sink_rate(torch.stack([part["sink"] for part in domain["layers"]]),
                                                 thresholds.sink_eps)
        out[f"{prefix}/null_mass"] = math.fsum(null) / len(null)
        out[f"{prefix}/entropy"] = math.fsum(entropy) / len(entropy)
        for key, value in (("loss", domain["loss"]), ("excess_loss", domain.get("excess"))):
            if value is not None:
                out[f"{prefix}/{key}"] = _mean(value).item() if value["count"] > 0 else math.nan
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
