"""Forward hooks that capture, in one no-grad eval pass over a fixed probe batch, what the
outlier metrics need: the residual stream after each block, the input of each FFN down
projection, Bondarenko et al.'s set of tensors (both norm outputs of every block, the
attention and FFN output projections, the block output, the final norm), and each
attention layer's probe-mode extras (probabilities, null mass, values, scale or gate...).
Hooks and probe flags are always removed afterwards."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from outlier_lab.models.gpt import GPT
from outlier_lab.metrics import Probe, run_measures
from outlier_lab.metrics.tokens import position_classes
from outlier_lab.pretrained.families import OURS, Family, linear_weights


@dataclass
class ProbeResult:
    residual: list[torch.Tensor] = field(default_factory=list)  # n_layer x (B, T, C): block outputs
    down_input: list[torch.Tensor] = field(default_factory=list)  # n_layer x (B, T, hidden)
    attention: list[dict[str, torch.Tensor]] = field(default_factory=list)  # n_layer x probe extras
    # Bondarenko et al.'s tensor set, by module name: h.<l>.ln_1, h.<l>.attn.c_proj, h.<l>.ln_2,
    # h.<l>.mlp.c_proj, h.<l> (the block output), ln_f
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    down_weights: list[torch.Tensor] = field(default_factory=list)  # n_layer x (C, hidden): W of each down projection
    linear_weights: list[torch.Tensor] = field(default_factory=list)  # every projection's weight, (out, in)
    # (B, T) next-token cross-entropy at each position of the probe batch; NaN at the last,
    # whose target the batch does not hold
    token_loss: torch.Tensor | None = None


@contextmanager
def probe_points(model: torch.nn.Module, family: Family) -> Iterator[Callable[[], ProbeResult]]:
    """Forward hooks on ``family``'s probe points of ``model`` while the block runs (always
    removed after). Yields ``collect()``: a ProbeResult of what the forwards so far passed
    there (each point's outputs concatenated over the forwards, i.e. the batch), with the
    down projections' and every projection's weights; the attention is the caller's."""
    watched, downs = family.watched(model), family.down_projections(model)
    outputs: dict[str, list[torch.Tensor]] = {name: [] for name in watched}
    down_inputs: list[list[torch.Tensor]] = [[] for _ in downs]

    def keep(name):  # a transformers decoder layer returns a tuple, hidden states first
        return lambda module, inputs, out: outputs[name].append((out[0] if isinstance(out, tuple) else out).detach())

    def keep_input(layer):
        return lambda module, inputs: down_inputs[layer].append(inputs[0].detach())

    def collect() -> ProbeResult:
        result = ProbeResult(tensors={name: torch.cat(parts) for name, parts in outputs.items()})
        result.residual = [result.tensors[f"h.{layer}"] for layer in range(len(downs))]
        result.down_input = [torch.cat(parts) for parts in down_inputs]
        result.down_weights = [w.detach() for w in family.down_weights(model)]
        result.linear_weights = [w.detach() for w in linear_weights(model)]
        return result

    handles = [module.register_forward_hook(keep(name)) for name, module in watched.items()]
    handles += [down.register_forward_pre_hook(keep_input(layer)) for layer, down in enumerate(downs)]
    try:
        yield collect
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def probe(model: GPT, idx: torch.Tensor, token_loss: bool = True) -> ProbeResult:
    """Run ``model`` on token ids ``idx`` in eval mode and return the captured tensors (with
    ``token_loss``: the next-token loss at each position, for the per-domain measures)."""
    blocks = list(model.transformer.h)
    was_training = model.training
    try:
        with probe_points(model, OURS) as collect:
            for block in blocks:
                block.attn.probe = True
            model.eval()
            logits = model(idx)
            result = collect()
        if token_loss:  # a float copy of (B, T, vocab) logits: only when something reads it
            loss = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), idx[:, 1:], reduction="none")  # (B, T-1)
            result.token_loss = F.pad(loss, (0, 1), value=math.nan)
        result.attention = [dict(block.attn.probe_out) for block in blocks]
    finally:
        for block in blocks:
            block.attn.probe = False
            block.attn.probe_out = {}
        model.train(was_training)
    return result


def data_domains(datamodule, idx: torch.Tensor) -> dict:
    """What a data module says about the probe windows idx, as Probe fields: the query
    domains it names (``probe_domains(idx)``) and, for data from a known process, the loss
    of the true next-token distribution at each position (``true_loss(idx)``), each only if
    the data module offers it."""
    out = {}
    if hasattr(datamodule, "probe_domains"):
        out["domains"] = datamodule.probe_domains(idx.cpu())
    if hasattr(datamodule, "true_loss"):
        out["optimum"] = datamodule.true_loss(idx.cpu())
    return out


def measure_model(model: GPT, idx: torch.Tensor, token_classes: torch.Tensor | None = None,
                  **probe_fields) -> tuple[ProbeResult, dict[str, float]]:
    """One probe of ``model`` on ``idx`` and every declared measure of it: what the
    OutlierMonitor logs at each probe and what analyze.py reports, by the same code.
    ``token_classes``: the class of each vocabulary id (``metrics.tokens.vocabulary_classes``);
    probe_fields: the thresholds and the data's domains (``data_domains``), see ``Probe``."""
    result = probe(model, idx, token_loss=bool(probe_fields.get("domains")))  # read per domain only
    positions = None if token_classes is None else position_classes(idx.cpu(), token_classes)
    return result, run_measures(Probe(result, model, positions, **probe_fields))
