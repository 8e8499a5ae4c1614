"""The capture both probes share (our GPT's, ``ours``, and a Hugging Face model's, ``hf``):
forward hooks on a family's probe points, and the session around one probe pass (eval mode,
the attention recording, everything undone afterwards, even on an error)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

from outlier_lab.metrics.probe_result import ProbeResult
from outlier_lab.probe.families import Family, linear_weights


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
        result.down_output = [result.tensors[f"h.{layer}.mlp.c_proj"] for layer in range(len(downs))]
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


@contextmanager
def probe_session(model: torch.nn.Module, family: Family,
                  record: Callable[[bool], None]) -> Iterator[Callable[[], ProbeResult]]:
    """One probe pass of ``model``: its probe points hooked (``probe_points``), its attention
    told to record (``record(True)``) and the model in eval mode, for the block's length;
    afterwards the hooks are gone, ``record(False)`` has cleared what the attention kept and
    the model is back in its training mode. The block reads the attention's records."""
    was_training = model.training
    try:
        with probe_points(model, family) as collect:
            record(True)
            model.eval()
            yield collect
    finally:
        record(False)
        model.train(was_training)
