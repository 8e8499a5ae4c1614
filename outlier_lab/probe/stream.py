"""The probe measured window by window: each pass's captures are reduced to the measures'
partial results (``metrics.registry.reduce_probe``) and released before the next pass, the
partials are merged (``metrics.partials``), and every measure finishes from the merged ones.
Memory is the model's plus one pass's captures, whatever the number of windows; the values
are those of one pass over all windows (tests/test_streaming.py). Our GPT's probe (``ours``)
and a Hugging Face model's (``hf``) both run through it."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from outlier_lab.metrics.measures import Probe
from outlier_lab.metrics.partials import merge, values
from outlier_lab.metrics.probe_result import ProbeResult
from outlier_lab.metrics.registry import finish_measures, reduce_probe
from outlier_lab.metrics.thresholds import Thresholds
from outlier_lab.metrics.tokens import position_classes

ROW_FIELDS = ("domains", "optimum")
M_MMAP_THRESHOLD, MMAP_BYTES = -3, 1 << 20  # glibc's mallopt parameter, and allocations from 1 MiB up


def hand_freed_memory_back() -> bool:
    """Make glibc serve every allocation of 1 MiB or more by its own mmap, so that it goes back
    to the OS when freed (``mallopt(M_MMAP_THRESHOLD)``); whether it could (glibc only).
    glibc's default threshold grows to 32 MiB as tensors are freed, and then keeps a window's
    freed captures and float32 copies in its heaps: analysing a 1.1B model in bf16 peaked
    at 4.7 GB instead of 3.3 GB (benchmarks/analyze_memory.py; docs/pretrained.md)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        return bool(name) and ctypes.CDLL(name).mallopt(M_MMAP_THRESHOLD, MMAP_BYTES) == 1
    except (OSError, AttributeError):  # not glibc (macOS, musl): its allocator's own policy
        return False  # Probe fields with one row per window, cut with the windows


def _rows(value, rows: slice):
    if isinstance(value, dict):
        return {name: v[rows] for name, v in value.items()}
    return None if value is None else value[rows]


def measure_stream(probe_fn: Callable[[torch.Tensor], ProbeResult], model: nn.Module, idx: torch.Tensor,
                   token_classes: torch.Tensor | None = None, windows_per_pass: int | None = None,
                   on_pass: Callable[[int], None] | None = None, **probe_fields) -> tuple[dict, dict[str, float]]:
    """Every declared measure of the probe ``probe_fn(ids) -> ProbeResult`` of ``model`` on
    the windows ``idx`` (B, T), ``windows_per_pass`` at a time (None: all at once), and the
    merged partial results they were finished from (by measure name, as values: what the
    figures and interventions read). ``token_classes``: the class of each vocabulary id
    (``metrics.tokens.vocabulary_classes``); probe_fields: ``thresholds`` and the data's
    ``domains`` and ``optimum`` (see ``metrics.Probe``), the latter two one row per window.
    ``on_pass(windows done)`` is called after each pass (a progress bar)."""
    unknown = set(probe_fields) - {"thresholds", *ROW_FIELDS}
    if unknown:
        raise TypeError(f"unknown probe fields {sorted(unknown)}")
    thresholds = Thresholds.of(probe_fields.get("thresholds"))
    positions = None if token_classes is None else position_classes(idx.cpu(), token_classes)
    step = windows_per_pass or len(idx)
    merged = None
    for start in range(0, len(idx), step):
        rows = slice(start, start + step)
        fields = {name: _rows(probe_fields.get(name), rows) for name in ROW_FIELDS}
        part = reduce_probe(Probe(probe_fn(idx[rows]), model, _rows(positions, rows), thresholds, **fields))
        merged = part if merged is None else merge(merged, part)  # this pass's captures are gone now
        if on_pass is not None:
            on_pass(min(start + step, len(idx)))
    parts = values(merged)
    return parts, finish_measures(parts, thresholds)
