"""Interventions that show what the outliers do: each edits a model for the length of a
``with`` block; ``evaluate`` gives the edited model's perplexity on the probe windows and its
next-token KL from the unmodified model. Each is declared once (``@intervention``), planned
from one probe of the model (ProbeResult and metrics), and works alike on a transformers
model prepared with ``outlier_lab.probe.hf.prepare`` and on our GPT (``families.OURS``).

- ``massive_zero`` / ``massive_mean`` (Sun et al. 2024, "Massive Activations in Large
  Language Models"; locuslab/massive-activations, lib/hook.py): a forward hook on one decoder
  layer's output replaces its massive activations. Sun et al. hook the layer where they
  appear and hard-code their channels and tokens (the first token; in LLaMA2-7B also the
  sequence's largest token): "set_zero" writes 0 there, "set_mean" a constant per (channel,
  token), the value those activations take on average over many sequences. A model that
  only needs them to be roughly constant keeps working with the mean and breaks with zero.
  As there, the layer is the first whose output holds massive activations in the probe (else
  ``top_channel_layer``); the entries are found in each forward, per sequence, as ``activation_stats``
  counts them: |h| > massive_abs and |h| >= massive_ratio x the sequence's median |h|. An
  entry's mean is the mean signed value of its channel's massive activations in the probe
  windows, apart for the first token and the others (Sun et al.'s two constants per channel;
  the other role's where one has none; the current batch's for a channel the probe never saw).
- ``sink_drop``: the heads whose Gu et al. sink score (``attention.sink_scores`` averaged
  over the probe's sequences) exceeds sink_eps, as ``outliers/attn/sink_rate`` counts them,
  lose their attention to the first key, each row rescaled to its old sum
  (``attention.drop_first_key``): a transformers model through its HeadTap, our GPT through a
  hook on ``attn.attn_probs`` (``expose_probs``), which in the slot family holds the keys and
  the slot together, so the slot takes its share of the removed weight.
- ``super_weight`` (Yu et al. 2024, "The Super Weight in Large Language Models"; arXiv
  2411.07191, mengxiayu/LLMSuperWeight): in each layer whose FFN down projection has both an
  input and an output spike (largest |value| > 50 in the probe), the one scalar W[row,
  column] is zeroed, row the output spike's channel and column the input spike's.
- ``super_column``: in every FFN down projection whose top input channel is its top weight
  column (``weights.channel_alignment``), that whole column is zeroed: the seed paper's
  weight outlier.

The two weight edits live in ``weight_interventions`` (imported at the end of this module,
which registers them after ``sink_drop``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from outlier_lab.errors import ConfigError
from outlier_lab.metrics.thresholds import Thresholds
from outlier_lab.metrics.activations import massive_mask
from outlier_lab.metrics.measures import massive_role_sums, role_means
from outlier_lab.metrics.measures_attention import head_sink_scores
from outlier_lab.probe.hf_attention import drop_first_key
from outlier_lab.probe.families import OURS, Family
from outlier_lab.pretrained.load import logits_of

INTERVENTIONS: dict[str, Callable[[Plan], Edit]] = {}


def intervention(name: str):
    """Decorator: ``fn(plan) -> Edit`` is the intervention ``name``."""
    def decorator(fn):
        INTERVENTIONS[name] = fn
        return fn
    return decorator


@dataclass
class Plan:
    """What an intervention is planned from: the model and one probe of it, its metrics and
    the partial results they were finished from (``parts``, by measure name, as
    ``probe.stream.measure_stream`` returns them)."""
    model: nn.Module
    family: Family
    parts: dict
    metrics: dict[str, float]
    thresholds: Thresholds = field(default_factory=Thresholds)  # the probe's (sink_tokens None: every query)


class Edit:
    """One planned edit: ``with edit:`` applies it (``apply(undo)`` appends to ``undo`` what
    reverts each step, run in reverse on leaving, also after an error); re-enterable.
    ``summary()`` -> (one line, JSON-ready details) says what it edited, after the runs where
    that depends on the input."""

    def __init__(self, name: str, apply: Callable[[list], None], summary: Callable[[], tuple[str, dict]]):
        self.name, self.apply, self.summary, self._undo = name, apply, summary, []

    def __enter__(self) -> Edit:
        try:
            self.apply(self._undo)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        while self._undo:
            self._undo.pop()()


def plan_edits(names, plan: Plan) -> list[Edit]:
    """The named interventions (one name or several) planned on ``plan``; an unknown name is a
    ConfigError."""
    names = [names] if isinstance(names, str) else list(names)
    unknown = [name for name in names if name not in INTERVENTIONS]
    if unknown:
        raise ConfigError(f"unknown intervention {unknown[0]!r}; choose from {', '.join(INTERVENTIONS)}")
    return [INTERVENTIONS[name](plan) for name in names]


# -- massive activations (Sun et al.) --------------------------------------------------------

def _massive(plan: Plan, mode: str) -> Edit:
    layers = plan.parts["activation_outliers"]["act"]
    found = [l for l in range(len(layers)) if plan.metrics.get(f"outliers/act/massive/layer_{l}")]
    layer = found[0] if found else int(plan.metrics["outliers/act/top_channel_layer"])  # where they appear
    bounds = plan.thresholds.massive_abs, plan.thresholds.massive_ratio
    block = plan.family.blocks(plan.model)[layer]
    means = role_means(layers[layer]["massive"]) if mode == "mean" else None
    seen = {"entries": 0, "uncalibrated": 0, "channels": set(), "positions": set()}

    def edit(h: torch.Tensor) -> torch.Tensor:
        mask = massive_mask(h, *bounds)
        if not mask.any():
            return h
        where = mask.nonzero()
        seen["entries"] += len(where)
        seen["channels"].update(where[:, 2].tolist())
        seen["positions"].update(where[:, 1].tolist())
        if means is None:
            return h.masked_fill(mask, 0)
        roles = (torch.arange(h.shape[1], device=h.device) > 0).long()  # 0: the first token, 1: the others
        table = means.to(h.device)[roles]  # (T, C)
        own = role_means(massive_role_sums(h, mask))
        table = torch.where(table.isnan(), own.to(h.device)[roles], table)  # a channel the probe never saw
        seen["uncalibrated"] += int((mask & means.to(h.device).isnan().all(0)).sum())
        return torch.where(mask, table.to(h.dtype).expand_as(h), h)

    def hook(module, inputs, output):
        if isinstance(output, tuple):
            return (edit(output[0]), *output[1:])
        return edit(output)

    def summary():
        criterion = f"|h| > {bounds[0]:g} and >= {bounds[1]:g} x median"
        details = {"layer": layer, "entries": seen["entries"], "channels": sorted(seen["channels"]),
                   "positions": sorted(seen["positions"])}
        if not seen["entries"]:
            return f"nothing: no massive activations ({criterion}) in layer {layer}", details
        text = (f"layer {layer}: {seen['entries']} entries ({criterion}) in channels {details['channels']} "
                f"at positions {details['positions'][:8]}{' ...' if len(details['positions']) > 8 else ''}")
        if means is None:
            return text + " set to 0", details
        values = {c: [round(v, 4) for v in means[:, c].tolist()] for c in details["channels"]}
        details.update(means={str(c): v for c, v in values.items()}, uncalibrated=seen["uncalibrated"])
        return (text + f" set to their mean (channel: [first token, others]) {values}"
                + (f", {seen['uncalibrated']} without a probe mean" if seen["uncalibrated"] else "")), details

    return Edit(f"massive_{mode}", lambda undo: undo.append(block.register_forward_hook(hook).remove), summary)


@intervention("massive_zero")
def massive_zero(plan: Plan) -> Edit:
    return _massive(plan, "zero")


@intervention("massive_mean")
def massive_mean(plan: Plan) -> Edit:
    return _massive(plan, "mean")


# -- attention sinks (Gu et al.) --------------------------------------------------------------

@intervention("sink_drop")
def sink_drop(plan: Plan) -> Edit:
    eps = plan.thresholds.sink_eps
    heads = {}
    for layer, score in enumerate(head_sink_scores(plan.parts["attention_outliers"])):  # (H,) each
        if sinking := [h for h in range(len(score)) if score[h] > eps]:
            heads[layer] = sinking
    attentions = plan.family.attentions(plan.model)

    def apply(undo):
        for layer, sinking in heads.items():
            module = attentions[layer]
            if (tap := getattr(module, "outlier_tap", None)) is not None:
                undo.append(lambda tap=tap, old=tap.drop_first: setattr(tap, "drop_first", old))
                tap.drop_first = list(sinking)
            elif hasattr(module, "attn_probs"):
                undo.append(lambda module=module, old=module.expose_probs: setattr(module, "expose_probs", old))
                module.expose_probs = True
                hook = module.attn_probs.register_forward_hook(lambda m, i, p, s=sinking: drop_first_key(p, s))
                undo.append(hook.remove)
            else:
                raise ConfigError(f"the attention of layer {layer} has no probe tap: run "
                                  "outlier_lab.probe.hf.prepare(model, family) first")

    def summary():
        if not heads:
            return f"nothing: no head has a sink score > {eps:g}", {"heads": {}}
        text = "; ".join(f"layer {layer}: heads {sinking}" for layer, sinking in heads.items())
        return f"{text} (sink score > {eps:g}) lose their first-token attention", {
            "heads": {str(layer): sinking for layer, sinking in heads.items()}}

    return Edit("sink_drop", apply, summary)


# -- evaluation -------------------------------------------------------------------------------

def default_logits(family: Family) -> Callable[[nn.Module, torch.Tensor], torch.Tensor]:
    """(model, ids) -> logits (B, T, vocab): our GPT returns them, a transformers model in .logits."""
    return (lambda model, ids: model(ids)) if family is OURS else logits_of


@torch.no_grad()
def evaluate(model: nn.Module, logits_fn, idx: torch.Tensor, edits: list[Edit] = ()) -> list[dict[str, float]]:
    """Perplexity (exp of the mean next-token cross-entropy over every position of ``idx``
    (B, T) that has a target) of the unmodified model and of each edit, and the mean over the
    same positions of KL(p_unmodified || p_edited) (0 for the unmodified model), in eval
    mode, one sequence at a time (each edit applied and undone around its forward)."""
    device = next(model.parameters()).device
    nll, kl, count = [0.0] * (len(edits) + 1), [0.0] * (len(edits) + 1), 0
    was_training = model.training
    model.eval()
    try:
        for row in idx:
            ids = row[None].to(device)
            targets = ids[0, 1:]
            base = torch.log_softmax(logits_fn(model, ids)[0, :-1].float(), dim=-1)
            nll[0] += F.nll_loss(base, targets, reduction="sum").item()
            p = base.exp()
            for i, edit in enumerate(edits, start=1):
                with edit:
                    logp = torch.log_softmax(logits_fn(model, ids)[0, :-1].float(), dim=-1)
                nll[i] += F.nll_loss(logp, targets, reduction="sum").item()
                kl[i] += torch.where(p > 0, p * (base - logp), 0.0).sum(-1).clamp_min(0).sum().item()  # float noise
            count += targets.numel()
    finally:
        model.train(was_training)
    return [{"ppl": math.inf if n / count > 700 else math.exp(n / count), "kl": k / count} for n, k in zip(nll, kl)]


def run_interventions(model: nn.Module, family: Family, idx: torch.Tensor, names, parts: dict, metrics: dict,
                      thresholds: Thresholds | None = None, logits_fn=None) -> list[dict]:
    """The named interventions, planned on one probe of ``model`` (its ``parts`` and
    ``metrics``; a transformers model prepared with ``probe.prepare``) and evaluated on
    windows ``idx``: rows {name, edited (one line), details, ppl, kl}, the unmodified model's first."""
    edits = plan_edits(names, Plan(model, family, parts, metrics, Thresholds.of(thresholds)))
    scores = evaluate(model, logits_fn or default_logits(family), idx, edits)
    rows = [{"name": "baseline", "edited": "nothing", "details": {}, **scores[0]}]
    for edit, score in zip(edits, scores[1:]):
        text, details = edit.summary()
        rows.append({"name": edit.name, "edited": text, "details": details, **score})
    return rows


from outlier_lab.pretrained import weight_interventions  # noqa: E402,F401  registers super_weight, super_column
