"""Guo et al. 2024's Bigram-Backcopy task ("Active-Dormant Attention Heads", arXiv
2410.13835), generated on the fly: a synthetic language in which some positions need the
previous token (attention has work to do) and all others need only the current one
(attention can idle, e.g. on a sink).

How a sequence is made:

- The source text is read as UTF-8 bytes. Only the ``vocab`` (V) most frequent byte values
  are kept (equal counts: the smaller byte value first); every other byte is removed from
  the stream. Token id i is the i-th most frequent kept byte, so id 0 is the most frequent.
- From the filtered stream: the unigram u (frequencies of the V tokens) and the bigram
  matrix P[a, b] (how often b directly follows a), each row normalised; a row that never
  occurs is replaced by u.
- The ``triggers`` (k) most frequent tokens, ids 0..k-1, are triggers.
- s_1 is drawn from u with the triggers removed (renormalised). After that, a non-trigger
  s_t is followed by a draw from P(. | s_t), and a trigger s_t is followed by a copy of
  s_{t-1} (the back-copy). s_1 is not a trigger, and the token after a trigger is a copy
  of a non-trigger, so a trigger never opens a sequence nor follows another trigger: every
  back-copy has a real token to copy.
- With ``bos`` the model reads [BOS, s_1 .. s_{T-1}] and predicts s_1 .. s_T (BOS = id V,
  V+1 ids); without it reads s_1 .. s_T and predicts s_2 .. s_{T+1} (V ids).

Guo et al.'s public generator is the ``bbm`` class of BBM/data.py in their repository
(github.com/GuoTianYu2000/Active-Dormant-Attention), the task that their README and
BBM/scripts/ train on (``task_name=bbm``). The process is the same: s_1 from the unigram
with the triggers removed and renormalised (their ``no_trigger_init``), then a copy of
s_{t-1} after a trigger and a draw from P(. | s_t) after any other token. What differs:

- Source text: theirs is Tiny Shakespeare (BBM/data/prepare.py); ours is the first 4 MB of
  the Python standard library's sources by default (``source`` takes any file).
- Vocabulary: theirs is every character of the text (65, plus BOS and a delimiter id that
  their bbm runs never emit: 67 ids), nothing removed, triggers the k most frequent (k = 3
  or 5 in their scripts) at their ids in character order. Ours keeps the V most frequent byte
  values and removes every other byte from the stream before counting (the bytes on either
  side of a removed one then count as a pair), with ids by frequency, triggers 0..k-1.
- Length: their model reads 256 positions, BOS and s_1 .. s_255 (``seq_length``, which no
  script changes); ours reads ``block_size``, 128 by default and 64 in the mechanism study
  (docs/mechanism.md).
- The BOS query: their trigger / non-trigger split of the loss and of the attention on BOS
  (``~triggers_pos`` in BBM/train_main.py and BBM/probe_utils.py) counts the BOS position on
  the non-trigger side; our "dormant" domain leaves BOS out (``probe_domains``), so dormant
  statistics are over text queries only.

The optimum is exact: after a non-trigger b the next token has entropy H(P(.|b)) whatever
came before, after a trigger it is certain, and the expected loss over a row follows from
carrying the distribution of (previous, current) token through the process. Training batch
i is a pure function of (seed, i), as in outlier_lab/data/datamodule.py, so a resumed run sees the
batches of an uninterrupted one. Nothing is cached: counting 4 MB of bytes takes 0.2 s.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from outlier_lab.data.backcopy_chain import BackcopyChain, entropy, read_source
from outlier_lab.data.datamodule import resumable_train_loader
from outlier_lab.errors import ConfigError

TRAIN, VAL, CALIBRATION, PROBE = range(4)  # the generator streams: np.random.default_rng((seed, stream, ...))
ESCAPES = {9: "\\t", 10: "\\n", 13: "\\r"}


class GeneratedBatches(Dataset):
    """Item ``i``: this rank's slice of batch_size x world_size rows drawn with the generator
    (seed, stream, i), so a data-parallel run sees the rows of a single-process run."""

    def __init__(self, chain: BackcopyChain, seed: int, stream: int, batch_size: int, num_batches: int,
                 rank: int = 0, world_size: int = 1):
        self.chain, self.seed, self.stream, self.batch_size = chain, seed, stream, batch_size
        self.num_batches, self.rank, self.world_size = num_batches, rank, world_size

    def __len__(self) -> int:
        return self.num_batches

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.chain.batch(np.random.default_rng((self.seed, self.stream, i)), self.batch_size * self.world_size)
        rows = slice(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)
        return x[rows], y[rows]


class BigramBackcopyDataModule(L.LightningDataModule):
    """The Bigram-Backcopy task with the interface of TextDataModule (see the module docstring)."""

    def __init__(self, vocab: int = 64, triggers: int = 3, source: str | None = None,
                 source_bytes: int | None = 4_000_000, block_size: int = 128, batch_size: int = 32,
                 val_batches: int = 8, seed: int = 0, num_workers: int = 0, bos: bool = True):
        super().__init__()
        if not 2 <= vocab <= 256:
            raise ConfigError(f"data.vocab={vocab} must be between 2 and 256 (the byte values)")
        if not 1 <= triggers <= vocab - 1:
            raise ConfigError(f"data.triggers={triggers} must be between 1 and {vocab - 1} (data.vocab={vocab})")
        if block_size < 3:
            raise ConfigError(f"data.block_size={block_size} is too short for a back-copy (a token, a trigger "
                              "and its copy): the minimum is 3")
        if min(batch_size, val_batches) <= 0 or (source_bytes is not None and source_bytes <= 0):
            raise ConfigError(f"data.batch_size={batch_size}, data.val_batches={val_batches} and "
                              f"data.source_bytes={source_bytes} must be positive (source_bytes may be null: all)")
        if source is not None and not Path(source).expanduser().is_file():
            raise ConfigError(f"data.source file not found: {source!r} (resolved from {Path.cwd()})")
        self.vocab, self.triggers, self.source, self.source_bytes = vocab, triggers, source, source_bytes
        self.block_size, self.batch_size, self.val_batches = block_size, batch_size, val_batches
        self.seed, self.num_workers, self.bos = seed, num_workers, vocab if bos else None  # the BOS id, or None
        self.tokenizer = SimpleNamespace(name="bigram_backcopy", vocab_size=vocab)  # evaluate.py names it
        self._chain: BackcopyChain | None = None

    @property
    def vocab_size(self) -> int:
        return self.vocab + (self.bos is not None)

    def prepare_data(self) -> None:  # nothing to download or cache
        pass

    def setup(self, stage: str | None = None) -> None:
        if self._chain is None:
            data = read_source(self.source, self.source_bytes)
            self._chain = BackcopyChain(data, self.vocab, self.triggers, self.block_size, self.bos is not None)

    @property
    def chain(self) -> BackcopyChain:
        self.setup()
        return self._chain

    @property
    def trigger_bytes(self) -> bytes:
        return bytes(self.chain.byte_values[: self.triggers].tolist())

    def decode_token(self, token: int) -> str:
        if token == self.bos:
            return "<bos>"
        b = int(self.chain.byte_values[token])
        return chr(b) if 32 <= b < 127 else ESCAPES.get(b, f"\\x{b:02x}")

    # -- baselines and optimum ------------------------------------------------------------

    @property
    def unigram_loss(self) -> float:
        """Entropy (nats) of the target tokens' frequencies, averaged over the row's positions:
        the loss of the best prediction that ignores the context."""
        return self.chain.exact["unigram"]

    @property
    def optimum_loss(self) -> float:
        """Exact expected loss per target position of the Bayes-optimal predictor."""
        return self.chain.exact["all"]

    @property
    def optimum_losses(self) -> dict[str, float]:
        """The optimum per query domain (see probe_domains); "dormant" is the expected loss
        summed over dormant positions divided by their expected number."""
        return {"active": 0.0, "dormant": self.chain.exact["dormant"], "all": self.chain.exact["all"]}

    @property
    def trigger_rate(self) -> float:
        """Expected share of input positions that hold a trigger."""
        return self.chain.exact["trigger_rate"]

    def probe_domains(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, T) query masks: "active" where the token is a trigger (the next token is the
        previous one: attention is needed), "dormant" where it is any other text token."""
        active = tokens < self.triggers
        return {"active": active, "dormant": ~active & (tokens != (-1 if self.bos is None else self.bos))}

    def position_optimum(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T) float32: the optimal expected loss of predicting the token after each
        position from the history: 0 after a trigger, H(P(.|token)) after another token,
        and after BOS the entropy of the first token's distribution."""
        table = np.append(self.chain.next_entropy, entropy(self.chain.p_start))  # id V: BOS
        return torch.as_tensor(table, dtype=torch.float32)[tokens.long().cpu()].to(tokens.device)

    def true_loss(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T) float32: -log p(next token | history) under the process itself, the loss of
        the Bayes-optimal predictor on these very tokens (NaN at the last position, whose
        next token the row does not hold). A model's loss minus this is a low-noise estimate
        of its excess over the optimum; ``position_optimum`` is its expectation."""
        x = tokens.long().cpu()
        cur, nxt = x[:, :-1], x[:, 1:]
        rows = torch.as_tensor(np.vstack([self.chain.P, self.chain.p_start]))  # row V: after BOS
        loss = -rows[cur, nxt.clamp(max=self.vocab - 1)].log()
        copy = cur[:, 1:] < self.triggers  # a trigger with a token before it (BOS, id V, is none)
        copied = torch.where(nxt[:, 1:] == x[:, :-2], 0.0, torch.inf).to(loss.dtype)
        loss[:, 1:] = torch.where(copy, copied, loss[:, 1:])
        return torch.nn.functional.pad(loss.float(), (0, 1), value=float("nan")).to(tokens.device)

    # -- batches --------------------------------------------------------------------------

    def probe_batch(self, sequences: int) -> torch.Tensor:
        """(sequences, block_size) inputs, the same every call."""
        return self.chain.batch(np.random.default_rng((self.seed, PROBE)), sequences)[0]

    def calibration_batches(self, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``count`` training-like batches from their own generator stream."""
        batches = GeneratedBatches(self.chain, self.seed, CALIBRATION, self.batch_size, count)
        return [batches[i] for i in range(count)]

    def validation_batches(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return list(self.val_dataloader())

    def train_dataloader(self) -> DataLoader:
        return resumable_train_loader(self.trainer, lambda count, rank, world_size: GeneratedBatches(
            self.chain, self.seed, TRAIN, self.batch_size, count, rank=rank, world_size=world_size), self.num_workers)

    def val_dataloader(self) -> DataLoader:
        dataset = GeneratedBatches(self.chain, self.seed, VAL, self.batch_size, self.val_batches)
        return DataLoader(dataset, batch_size=None, shuffle=False, num_workers=self.num_workers)
