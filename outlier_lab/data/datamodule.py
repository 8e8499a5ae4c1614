"""The LightningDataModule: tokenize a corpus once into cached memmaps, then serve
random training windows and a fixed set of validation windows.

Training batch ``i`` is a pure function of (seed, rank, i), and the sampler starts at
the batch after the last optimizer step, so a resumed run sees exactly the batches an
uninterrupted run would have seen.
"""

from __future__ import annotations

import hashlib
import json
import os
from functools import cached_property
from pathlib import Path

import lightning as L
import numpy as np
import torch
from rich.console import Console
from torch.utils.data import DataLoader, Dataset, Sampler

from outlier_lab.data.corpora import Corpus
from outlier_lab.data.tokenizers import build_tokenizer
from outlier_lab.errors import ConfigError

CACHE_FORMAT = 1


def default_cache_dir() -> Path:
    root = os.environ.get("OUTLIER_LAB_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "outlier-lab"
    return Path(root)


class RandomWindowBatches(Dataset):
    """Item ``i`` is this rank's slice of global batch ``i``: batch_size x world_size random
    windows drawn with the generator (seed, i). A data-parallel run therefore sees exactly
    the windows of a single-process run with the same global batch."""

    def __init__(self, tokens: np.ndarray, block_size: int, batch_size: int, num_batches: int, seed: int,
                 rank: int = 0, world_size: int = 1, bos: int | None = None):
        self.tokens, self.block_size, self.batch_size, self.bos = tokens, block_size, batch_size, bos
        self.num_batches, self.seed, self.rank, self.world_size = num_batches, seed, rank, world_size

    def __len__(self) -> int:
        return self.num_batches

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng((self.seed, i))
        starts = rng.integers(0, len(self.tokens) - self.block_size - 1, size=self.batch_size * self.world_size)
        return _windows(self.tokens, starts[self.rank * self.batch_size :][: self.batch_size], self.block_size, self.bos)


class FixedWindows(Dataset):
    """``count`` evenly spaced windows over the tokens: the same every time."""

    def __init__(self, tokens: np.ndarray, block_size: int, count: int, bos: int | None = None):
        self.tokens, self.block_size, self.bos = tokens, block_size, bos
        self.starts = np.linspace(0, len(tokens) - block_size - 1, count).astype(np.int64)

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = _windows(self.tokens, self.starts[i : i + 1], self.block_size, self.bos)
        return x[0], y[0]


def _windows(tokens: np.ndarray, starts: np.ndarray, block_size: int, bos: int | None = None):
    """(inputs, targets) of the windows at ``starts``. With ``bos``, every input window begins
    with that token and the targets are the block_size text tokens after it."""
    chunk = torch.from_numpy(tokens[starts[:, None] + np.arange(block_size + 1)].astype(np.int64))
    if bos is None:
        return chunk[:, :-1], chunk[:, 1:]
    x = torch.cat([torch.full_like(chunk[:, :1], bos), chunk[:, : block_size - 1]], dim=1)
    return x, chunk[:, :block_size]


def resumable_train_loader(trainer, build, num_workers: int = 0) -> DataLoader:
    """The training loader of a data module whose batch i is a pure function of its seed and
    i: ``build(num_batches, rank, world_size)`` makes the dataset (one item = one batch), and
    the sampler starts after the batches that the restored optimizer steps consumed, so a
    resumed run sees exactly the batches of an uninterrupted one."""
    accumulate = trainer.accumulate_grad_batches if trainer else 1
    max_steps = trainer.max_steps if trainer else -1
    if max_steps is None or max_steps <= 0:
        raise ConfigError("trainer.max_steps must be set (> 0): training samples random batches, not epochs")
    dataset = build(max_steps * accumulate, trainer.global_rank if trainer else 0, trainer.world_size if trainer else 1)
    start = trainer.global_step * accumulate if trainer else 0
    return DataLoader(dataset, batch_size=None, sampler=ResumableSampler(len(dataset), start),
                      num_workers=num_workers, persistent_workers=num_workers > 0)


class ResumableSampler(Sampler[int]):
    """Indices ``start .. length-1``. Its length stays ``length`` so that progress bars
    count from the restored position towards the full run."""

    def __init__(self, length: int, start: int = 0):
        self.length, self.start = length, start

    def __iter__(self):
        return iter(range(self.start, self.length))

    def __len__(self) -> int:
        return self.length


class TextDataModule(L.LightningDataModule):
    def __init__(
        self,
        corpus: Corpus,
        tokenizer: str = "byte",
        block_size: int = 256,
        batch_size: int = 16,
        val_every: int = 100,
        chunk_tokens: int = 16384,
        val_batches: int = 16,
        max_tokens: int | None = None,
        cache_dir: str | None = None,
        seed: int = 0,
        num_workers: int = 0,
        bos: bool = False,
    ):
        super().__init__()
        if min(block_size, batch_size, val_batches, chunk_tokens) <= 0 or val_every < 2:
            raise ConfigError(
                "data.block_size, data.batch_size, data.val_batches, data.chunk_tokens must be positive "
                "and data.val_every >= 2"
            )
        self.corpus, self.tokenizer = corpus, build_tokenizer(tokenizer)
        self.block_size, self.batch_size, self.val_batches = block_size, batch_size, val_batches
        self.val_every, self.chunk_tokens, self.max_tokens = val_every, chunk_tokens, max_tokens
        self.seed, self.num_workers = seed, num_workers
        # A beginning-of-sequence token (one extra id) at position 0 of every window, as in
        # LLaMA-style training: a fixed key that heads can park their attention on.
        self.bos = self.tokenizer.vocab_size if bos else None
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.train_tokens: np.ndarray | None = None
        self.val_tokens: np.ndarray | None = None
        self.meta: dict = {}

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size + (self.bos is not None)

    def decode_token(self, token: int) -> str:
        return "<bos>" if token == self.bos else self.tokenizer.decode([token])

    @cached_property
    def cache_path(self) -> Path:
        key = json.dumps(
            [CACHE_FORMAT, self.corpus.fingerprint(), self.tokenizer.name, self.val_every, self.chunk_tokens, self.max_tokens]
        )
        return self.cache_dir / f"{type(self.corpus).__name__.lower()}-{hashlib.sha1(key.encode()).hexdigest()[:16]}"

    # -- tokenization, once -------------------------------------------------------------

    def prepare_data(self) -> None:
        if not (self.cache_path / "meta.json").is_file():
            self._tokenize_corpus(self.cache_path)

    def _tokenize_corpus(self, out: Path) -> None:
        """Stream documents, cut each into chunks of ``chunk_tokens``; every ``val_every``-th
        chunk goes to validation (so a single long file splits too). Written under
        temporary names and renamed at the end, so an interrupted run leaves no cache."""
        console = Console(stderr=True)
        out.mkdir(parents=True, exist_ok=True)
        tag = f".tmp{os.getpid()}"
        counts = np.zeros(self.vocab_size, dtype=np.int64)
        sizes = {"train": 0, "val": 0, "documents": 0, "chunks": 0}
        eot = np.asarray([self.tokenizer.eot], dtype=self.tokenizer.dtype)
        batch: list[str] = []
        with console.status(f"Tokenizing {self.corpus.describe()} into {out} ..."):
            with open(out / f"train.bin{tag}", "wb") as train_f, open(out / f"val.bin{tag}", "wb") as val_f:

                def flush():
                    for ids in self.tokenizer.encode_batch(batch):
                        ids = np.concatenate([ids, eot])
                        for start in range(0, len(ids), self.chunk_tokens):
                            chunk = ids[start : start + self.chunk_tokens]
                            split = "val" if sizes["chunks"] % self.val_every == self.val_every // 2 else "train"
                            (val_f if split == "val" else train_f).write(chunk.tobytes())
                            sizes[split] += len(chunk)
                            sizes["chunks"] += 1
                            if split == "train":
                                counts[:] += np.bincount(chunk, minlength=self.vocab_size)
                    sizes["documents"] += len(batch)
                    batch.clear()

                for text in self.corpus.documents():
                    batch.append(text)
                    if len(batch) == 64:
                        flush()
                        if self.max_tokens and sizes["train"] >= self.max_tokens:
                            break
                flush()
        for split in ("train", "val"):
            if sizes[split] < self.block_size + 2:
                raise ConfigError(
                    f"the corpus gives only {sizes[split]} {split} tokens, fewer than block_size+2={self.block_size + 2}; "
                    f"use more text or a smaller data.val_every (now {self.val_every})"
                )
            os.replace(out / f"{split}.bin{tag}", out / f"{split}.bin")
        p = counts[counts > 0] / counts.sum()
        meta = dict(
            format=CACHE_FORMAT, corpus=self.corpus.describe(), tokenizer=self.tokenizer.name,
            dtype=np.dtype(self.tokenizer.dtype).name, train_tokens=sizes["train"], val_tokens=sizes["val"],
            documents=sizes["documents"], unigram_loss=float(-(p * np.log(p)).sum()),
        )
        tmp_meta = out / f"meta.json{tag}"
        tmp_meta.write_text(json.dumps(meta, indent=2))
        os.replace(tmp_meta, out / "meta.json")
        console.print(f"Tokenized {sizes['documents']} documents: {sizes['train']:,} train / {sizes['val']:,} val tokens")

    # -- serving ------------------------------------------------------------------------

    def setup(self, stage: str | None = None) -> None:
        if self.train_tokens is not None:
            return
        path = self.cache_path
        try:
            self.meta = json.loads((path / "meta.json").read_text())
            dtype = np.dtype(self.meta["dtype"])
            self.train_tokens = np.memmap(path / "train.bin", dtype=dtype, mode="r")
            self.val_tokens = np.memmap(path / "val.bin", dtype=dtype, mode="r")
        except (OSError, ValueError, KeyError) as e:
            raise ConfigError(f"token cache at {path} is missing or corrupt ({e}); delete that folder to rebuild it") from None
        if len(self.train_tokens) != self.meta["train_tokens"] or len(self.val_tokens) != self.meta["val_tokens"]:
            raise ConfigError(f"token cache at {path} is truncated; delete that folder to rebuild it")

    @property
    def unigram_loss(self) -> float:
        """Cross-entropy (nats/token) of the training unigram distribution: the loss to beat."""
        return self.meta["unigram_loss"]

    def probe_batch(self, sequences: int) -> torch.Tensor:
        """Token ids (sequences, block_size) of fixed, evenly spaced validation windows: the
        same tokens every time, so outlier curves compare across steps and variants."""
        windows = FixedWindows(self.val_tokens, self.block_size, sequences, self.bos)
        return torch.stack([windows[i][0] for i in range(sequences)])

    def calibration_batches(self, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``count`` training batches for calibrating quantization ranges (not the ones the
        model trained on first: drawn with a different seed)."""
        batches = RandomWindowBatches(self.train_tokens, self.block_size, self.batch_size, count, self.seed + 1,
                                      bos=self.bos)
        return [batches[i] for i in range(count)]

    def validation_batches(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return list(self.val_dataloader())

    def train_dataloader(self) -> DataLoader:
        return resumable_train_loader(self.trainer, lambda count, rank, world_size: RandomWindowBatches(
            self.train_tokens, self.block_size, self.batch_size, count, self.seed, rank=rank,
            world_size=world_size, bos=self.bos), self.num_workers)

    def val_dataloader(self) -> DataLoader:
        dataset = FixedWindows(self.val_tokens, self.block_size, self.val_batches * self.batch_size, self.bos)
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers)


def batch_size(batch) -> int:
    """Sequences in a batch (for Lightning's ThroughputMonitor)."""
    return batch[0].size(0)


def batch_tokens(batch) -> int:
    """Tokens in a batch (ThroughputMonitor's "items")."""
    return batch[0].numel()
