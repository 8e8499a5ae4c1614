"""The probe of our GPT: one no-grad eval pass over a fixed probe batch that captures what
the outlier metrics need: the residual stream after each block, the input of each FFN down
projection, Bondarenko et al.'s set of tensors (both norm outputs of every block, the
attention and FFN output projections, the block output, the final norm), and each
attention layer's probe-mode extras (probabilities, null mass, values, scale or gate...).
Hooks and probe flags are always removed afterwards (``capture.probe_session``)."""

from __future__ import annotations

import math
import torch
import torch.nn.functional as F

from outlier_lab.data.interface import KnownProcess, query_domains
from outlier_lab.models.gpt import GPT
from outlier_lab.metrics.probe_result import ProbeResult
from outlier_lab.probe.capture import probe_session
from outlier_lab.probe.families import OURS
from outlier_lab.probe.stream import measure_stream


@torch.no_grad()
def probe(model: GPT, idx: torch.Tensor, token_loss: bool = True) -> ProbeResult:
    """Run ``model`` on token ids ``idx`` in eval mode and return the captured tensors (with
    ``token_loss``: the next-token loss at each position, for the per-domain measures)."""
    blocks = list(model.transformer.h)

    def record(on: bool) -> None:
        for block in blocks:
            block.attn.probe = on
            block.attn.probe_out = {}

    with probe_session(model, OURS, record) as collect:
        logits = model(idx)
        result = collect()
        result.attention = [dict(block.attn.probe_out) for block in blocks]
    if token_loss:  # a float copy of (B, T, vocab) logits: only when something reads it
        loss = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), idx[:, 1:], reduction="none")  # (B, T-1)
        result.token_loss = F.pad(loss, (0, 1), value=math.nan)
    return result


def data_domains(datamodule, idx: torch.Tensor) -> dict:
    """What a data module says about the probe windows idx, as Probe fields: the query
    domains it names (``probe_domains(idx)``) and, for data from a known process, the loss
    of the true next-token distribution at each position (``true_loss(idx)``), each only if
    the data module offers it (outlier_lab/data/interface.py)."""
    out = {}
    if domains := query_domains(datamodule, idx.cpu()):
        out["domains"] = domains
    if isinstance(datamodule, KnownProcess):
        out["optimum"] = datamodule.true_loss(idx.cpu())
    return out


def measure_model(model: GPT, idx: torch.Tensor, token_classes: torch.Tensor | None = None,
                  windows_per_pass: int | None = None, on_pass=None, **probe_fields) -> tuple[dict, dict[str, float]]:
    """Every declared measure of ``model``'s probe on ``idx`` (``stream.measure_stream``: in one
    pass, or ``windows_per_pass`` windows at a time), and the partials they came from: what
    the OutlierMonitor logs at each probe and what analyze.py reports, by the same code.
    ``token_classes``: the class of each vocabulary id (``metrics.tokens.vocabulary_classes``);
    probe_fields: the thresholds and the data's domains (``data_domains``), see ``Probe``."""
    token_loss = bool(probe_fields.get("domains"))  # read per domain only
    return measure_stream(lambda ids: probe(model, ids, token_loss=token_loss), model, idx, token_classes,
                          windows_per_pass, on_pass, **probe_fields)
