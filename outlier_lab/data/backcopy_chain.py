"""The Bigram-Backcopy process itself (outlier_lab/data/bigram_backcopy.py is its data module): the
source's bytes, the bigram chain with its triggers, vectorised sampling, and the exact
statistics of the process (marginals, optimum loss). Plain numpy, picklable."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from outlier_lab.data.corpora import PythonStdlib
from outlier_lab.errors import ConfigError


def read_source(source: str | None, source_bytes: int | None) -> bytes:
    """The first ``source_bytes`` bytes (None: all) of the file, or of the standard library's
    .py files concatenated in PythonStdlib's order. The files are read directly: that yields
    exactly PythonStdlib().documents() (tests check it) in milliseconds instead of the
    seconds that streaming them through ``datasets`` takes."""
    if source is not None:
        with open(Path(source).expanduser(), "rb") as f:
            return f.read(-1 if source_bytes is None else source_bytes)
    parts, size = [], 0
    for path in PythonStdlib().files:
        parts.append(path.read_text(encoding="utf-8", errors="replace").encode())
        size += len(parts[-1])
        if source_bytes is not None and size >= source_bytes:
            break
    return b"".join(parts)[:source_bytes]


def entropy(p: np.ndarray) -> np.ndarray:
    """Entropy in nats of the distributions along the last axis (0 log 0 = 0)."""
    return -(p * np.log(np.where(p > 0, p, 1.0))).sum(-1)


def _cdf(p: np.ndarray) -> np.ndarray:
    """Cumulative sums along the last axis, scaled so that each row ends at exactly 1."""
    return np.cumsum(p, axis=-1) / np.cumsum(p, axis=-1)[..., -1:]


class BackcopyChain:
    """The process itself: sampling and its exact statistics (plain numpy, picklable). s_1
    is drawn from ``p_start``, the unigram u without the triggers, renormalised: as in Guo
    et al.'s ``bbm`` task (their ``no_trigger_init``), not uniformly; where the two
    generators differ is listed in outlier_lab/data/bigram_backcopy.py."""

    def __init__(self, data: bytes, vocab: int, triggers: int, block_size: int, bos: bool):
        stream = np.frombuffer(data, dtype=np.uint8)
        counts = np.bincount(stream, minlength=256)
        distinct = int((counts > 0).sum())
        if vocab > distinct:
            raise ConfigError(f"data.vocab={vocab} is more than the {distinct} distinct byte values in the source "
                              f"({len(data)} bytes); choose data.vocab between 2 and {distinct}")
        self.byte_values = np.lexsort((np.arange(256), -counts))[:vocab]  # by count down, then byte value
        lut = np.full(256, -1, dtype=np.int64)
        lut[self.byte_values] = np.arange(vocab)
        ids = lut[stream]
        ids = ids[ids >= 0]
        self.u = counts[self.byte_values] / counts[self.byte_values].sum()
        pairs = np.bincount(ids[:-1] * vocab + ids[1:], minlength=vocab * vocab).reshape(vocab, vocab)
        rows = pairs.sum(1, keepdims=True)
        self.P = np.where(rows > 0, pairs / np.maximum(rows, 1), self.u)
        self.p_start = np.where(np.arange(vocab) < triggers, 0.0, self.u)
        self.p_start /= self.p_start.sum()
        self.vocab, self.k, self.block_size = vocab, triggers, block_size
        self.bos = vocab if bos else None
        self.length = block_size + (not bos)  # tokens s_1 .. s_N behind one row
        self._cdf_P, self._cdf_start = _cdf(self.P), _cdf(self.p_start)

    # -- sampling -------------------------------------------------------------------------

    def sequences(self, rng: np.random.Generator, rows: int) -> np.ndarray:
        """(rows, N) int64 tokens s_1 .. s_N, vectorised over rows: one uniform per (row,
        position); a categorical draw is the number of cdf entries at or below it."""
        r = rng.random((rows, self.length))
        s = np.empty((rows, self.length), dtype=np.int64)
        s[:, 0] = (self._cdf_start[None] <= r[:, :1]).sum(1)
        for t in range(1, self.length):
            drawn = (self._cdf_P[s[:, t - 1]] <= r[:, t : t + 1]).sum(1)
            s[:, t] = np.where(s[:, t - 1] < self.k, s[:, t - 2], drawn) if t >= 2 else drawn
        return s

    def batch(self, rng: np.random.Generator, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets), each (rows, block_size) int64."""
        s = torch.from_numpy(self.sequences(rng, rows))
        if self.bos is None:
            return s[:, :-1], s[:, 1:]
        return torch.cat([torch.full_like(s[:, :1], self.bos), s[:, :-1]], dim=1), s

    # -- exact statistics -----------------------------------------------------------------

    def marginals(self) -> np.ndarray:
        """(N, V) exact distributions of s_1 .. s_N, carrying that of (s_{t-1}, s_t) forward:
        (a, b) goes on to (b, c) with probability P[b, c], or to (b, a) if b is a trigger."""
        out = [self.p_start]
        joint = self.p_start[:, None] * self.P  # (s_1, s_2)
        for _ in range(1, self.length):
            out.append(joint.sum(0))
            nxt = out[-1][:, None] * self.P
            nxt[: self.k] = joint[:, : self.k].T
            joint = nxt
        return np.stack(out)

    @property
    def next_entropy(self) -> np.ndarray:
        """(V,) the optimal expected loss after each token: 0 after a trigger, H(P(.|b)) else."""
        h = entropy(self.P)
        h[: self.k] = 0.0
        return h

    @cached_property
    def exact(self) -> dict[str, float]:
        """The optimum per input position (all, and over dormant queries), the entropy of the
        target tokens' mean distribution, and the expected share of trigger positions."""
        m, h, T, k = self.marginals(), self.next_entropy, self.block_size, self.k
        inputs, targets = (m[: T - 1], m[:T]) if self.bos is not None else (m[:T], m[1:])  # without BOS
        start = entropy(self.p_start) if self.bos is not None else 0.0  # the BOS position's optimum
        return dict(all=float((start + (inputs @ h).sum()) / T),
                    dormant=float((inputs[:, k:] @ h[k:]).sum() / inputs[:, k:].sum()),
                    unigram=float(entropy(targets.mean(0))), trigger_rate=float(inputs[:, :k].sum() / T))
