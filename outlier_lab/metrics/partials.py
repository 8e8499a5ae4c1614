"""The reduced form of one probe pass, and how two of them combine: every measure turns the
tensors one window (or batch) of windows captured into a few partial results, the partials
of all windows are merged, and the measure finishes from the merged ones. So a model is
analysed one window at a time, each window's captures released when it is reduced, and
the values equal those of one pass over all windows at once (tests/test_streaming.py).

A partial is a nested dict or list whose leaves are one of:

- ``Rows``: one row per sequence (per-sequence top values, medians, kurtosis, sink scores,
  ...), concatenated over windows. Almost every statistic is computed per sequence and then
  averaged, as the sources do, so its per-sequence values are its exact reduced form, and
  the medians (within one sequence) stay exact order statistics.
- ``Max`` / ``Min`` / ``Sum``: an elementwise maximum (a largest |h|, a channel's largest |h|),
  minimum or sum
  (the weighted sums of the per-domain means, the sums of the massive activations' values).
- ``First``: the first window's value (what the figures draw); later ones are dropped.
- ``Peaks``: the entries of a tensor at or above half its running maximum, with a label
  each: all that the top channel's position classes can need (see ``Peaks``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Rows:
    value: torch.Tensor  # (sequences, ...)

    def merge(self, other: Rows) -> Rows:
        return Rows(torch.cat([self.value, other.value]))


@dataclass
class Max:
    value: torch.Tensor

    def merge(self, other: Max) -> Max:
        return Max(torch.maximum(self.value, other.value))


@dataclass
class Min:
    value: torch.Tensor

    def merge(self, other: Min) -> Min:
        return Min(torch.minimum(self.value, other.value))


@dataclass
class Sum:
    value: torch.Tensor

    def merge(self, other: Sum) -> Sum:
        return Sum(self.value + other.value)


@dataclass
class First:
    value: object

    def merge(self, other: First) -> First:
        return self


@dataclass
class Peaks:
    """The entries ``values`` (N,) of a tensor whose maximum so far is ``top``, that are at
    or above half of it, with their ``labels`` (N, k) (e.g. channel and position class).
    An entry below half the running maximum can never be at or above half the final one,
    which is at least as large, so keeping only these is exact for any statistic over the
    entries >= half the final maximum of the tensor, or of a part of it (a channel) whose
    maximum is the tensor's."""
    top: torch.Tensor
    values: torch.Tensor
    labels: torch.Tensor

    @classmethod
    def of(cls, values: torch.Tensor, labels: torch.Tensor) -> Peaks:
        top = values.max() if values.numel() else values.new_tensor(0.0)
        return cls(top, values, labels)._pruned()

    def merge(self, other: Peaks) -> Peaks:
        return Peaks(torch.maximum(self.top, other.top), torch.cat([self.values, other.values]),
                     torch.cat([self.labels, other.labels]))._pruned()

    def _pruned(self) -> Peaks:
        keep = self.values >= 0.5 * self.top
        return Peaks(self.top, self.values[keep], self.labels[keep])


LEAVES = (Rows, Max, Min, Sum, First, Peaks)


def merge(a, b):
    """Two partials of the same structure as one: dicts key by key, lists item by item, and
    each leaf by its own rule."""
    if isinstance(a, dict):
        if a.keys() != b.keys():
            raise ValueError(f"partials with different keys: {sorted(a)} and {sorted(b)}")
        return {key: merge(a[key], b[key]) for key in a}
    if isinstance(a, list):
        if len(a) != len(b):
            raise ValueError(f"partials of {len(a)} and {len(b)} items")
        return [merge(x, y) for x, y in zip(a, b)]
    if isinstance(a, LEAVES) and type(a) is type(b):
        return a.merge(b)
    raise TypeError(f"cannot merge a {type(a).__name__} with a {type(b).__name__}")


def values(partial):
    """The partial with every leaf but ``Peaks`` replaced by its value (anything else is kept as
    it is): what a measure finishes from."""
    if isinstance(partial, dict):
        return {key: values(item) for key, item in partial.items()}
    if isinstance(partial, list):
        return [values(item) for item in partial]
    return partial.value if isinstance(partial, LEAVES) and not isinstance(partial, Peaks) else partial
