"""Calibration: statistics of activations over calibration batches (model in eval mode, no
grad; the model is left as it was).

- ``calibrate_input_ranges``: min and max of each nn.Linear input (torch's MinMaxObserver).
- ``calibrate_abs_percentiles``: an exact percentile of each nn.Linear's |input|.
- ``observe_channel_ranges``: per-channel min and max of given modules' outputs
  (torch's PerChannelMinMaxObserver).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable

import torch
from torch import nn
from torch.ao.quantization import MinMaxObserver, PerChannelMinMaxObserver

from outlier_lab.compression.passes import forward_all, run_with_input_hooks, token_ids
from outlier_lab.compression.ranges import quantile_from_top


def calibrate_input_ranges(model: nn.Module, batches: Iterable) -> dict[str, tuple[float, float]]:
    """Static ranges: min and max (in float32) of the input of every nn.Linear, by module name,
    over the token batches. A Linear that never ran is missing."""
    observers: dict[str, MinMaxObserver] = {}

    def record(name: str, x: torch.Tensor) -> None:
        if name not in observers:
            observers[name] = MinMaxObserver().to(x.device)
        observers[name](x)

    run_with_input_hooks(model, token_ids(batches), record)
    return {name: (obs.min_val.item(), obs.max_val.item()) for name, obs in observers.items()}


def calibrate_abs_percentiles(model: nn.Module, batches: Iterable, percentile: float = 99.9) -> dict[str, float]:
    """The ``percentile`` of |input| of every nn.Linear over all elements of all token batches,
    by module name, exact (torch.quantile's linear interpolation). Two passes: the first
    counts the elements, the second keeps only the largest values needed for that count.

    Explicit rather than an observer: torch's HistogramObserver only approximates a quantile
    (by bins), and torch.quantile needs every value in memory at once (and at most 2^24 of them).
    """
    inputs = token_ids(batches)
    q = percentile / 100
    counts: dict[str, int] = defaultdict(int)

    def count(name: str, x: torch.Tensor) -> None:
        counts[name] += x.numel()

    run_with_input_hooks(model, inputs, count)
    needed = {name: n - math.floor(q * (n - 1)) for name, n in counts.items()}
    top: dict[str, torch.Tensor] = {}

    def record(name: str, x: torch.Tensor) -> None:
        values = x.abs().flatten().float()
        if name in top:
            values = torch.cat([top[name], values])
        top[name] = values.topk(min(needed[name], values.numel())).values

    run_with_input_hooks(model, inputs, record)
    return {name: quantile_from_top(top[name], counts[name], q) for name in top}


def observe_channel_ranges(model: nn.Module, inputs: list[torch.Tensor],
                           modules: Iterable[nn.Module]) -> dict[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    """Per-channel (last dimension) min and max, in float32, of the output of each of
    ``modules`` over the inputs: {module: (lo, hi)}, without the modules that never ran."""
    observers: dict[nn.Module, PerChannelMinMaxObserver] = {}

    def observe(module: nn.Module, _args, out: torch.Tensor) -> None:
        if module not in observers:
            observers[module] = PerChannelMinMaxObserver(ch_axis=out.dim() - 1).to(out.device)
        observers[module](out)

    forward_all(model, inputs, [module.register_forward_hook(observe) for module in modules])
    return {module: (obs.min_val, obs.max_val) for module, obs in observers.items()}
