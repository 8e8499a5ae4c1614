"""What the rest of the project asks of a data module, as Protocols that are checked when a
run or an analysis builds one (``check_data_module``), instead of an interface written only
in the docs and found with ``hasattr``.

``DataModule`` is required: the monitor, compression, evaluate.py and analyze.py use nothing
else. ``QueryDomains`` and ``KnownProcess`` are optional, for synthetic tasks that know more
about their windows (the Bigram-Backcopy task has both). An optional method under a name
one or two letters off (``probe_domain``) would otherwise be silently never called, so a
near miss is an error too."""

from __future__ import annotations

import difflib
from typing import Protocol, runtime_checkable

import torch

from outlier_lab.errors import ConfigError


@runtime_checkable
class DataModule(Protocol):
    vocab_size: int  # token ids are 0 .. vocab_size - 1 (a BOS id included)

    def decode_token(self, token: int) -> str: ...  # a token's text, for labels and token classes

    def probe_batch(self, sequences: int) -> torch.Tensor: ...  # (sequences, block_size) fixed windows

    def calibration_batches(self, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]: ...  # training data

    def validation_batches(self) -> list[tuple[torch.Tensor, torch.Tensor]]: ...

    def train_dataloader(self): ...

    def val_dataloader(self): ...


@runtime_checkable
class QueryDomains(Protocol):
    def probe_domains(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]: ...  # name -> (B, T) bool


@runtime_checkable
class KnownProcess(Protocol):
    def true_loss(self, tokens: torch.Tensor) -> torch.Tensor: ...  # (B, T) the true distribution's loss


def members(protocol: type) -> list[str]:
    return sorted({*protocol.__annotations__, *(n for n in vars(protocol) if not n.startswith("_"))})


def check_data_module(datamodule) -> None:
    """ConfigError (one line) when ``datamodule`` lacks a required member, or has a public name
    that is a near miss of an optional one it does not have."""
    name = type(datamodule).__name__
    missing = [m for m in members(DataModule) if not (hasattr(type(datamodule), m) or hasattr(datamodule, m))]
    if missing:
        raise ConfigError(f"data module {name} lacks {', '.join(missing)}: a data module needs "
                          f"{', '.join(members(DataModule))} (outlier_lab/data/interface.py)")
    optional = [m for protocol in (QueryDomains, KnownProcess) for m in members(protocol)]
    for attribute in dir(type(datamodule)):
        if attribute.startswith("_") or attribute in optional:
            continue
        near = difflib.get_close_matches(attribute, [m for m in optional if not hasattr(datamodule, m)], n=1,
                                         cutoff=0.85)
        if near:
            raise ConfigError(f"data module {name} has {attribute}, not {near[0]}: the monitor and analyze.py call "
                              f"{near[0]} (optional members: {', '.join(optional)}); rename it")


def query_domains(datamodule, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """The data module's query domains of ``tokens`` (B, T), checked: {} without QueryDomains."""
    if not isinstance(datamodule, QueryDomains):
        return {}
    domains = datamodule.probe_domains(tokens)
    bad = [d for d, mask in domains.items()
           if not (isinstance(mask, torch.Tensor) and mask.dtype == torch.bool and mask.shape == tokens.shape)]
    if bad:
        raise ConfigError(f"{type(datamodule).__name__}.probe_domains must give (B, T) = {tuple(tokens.shape)} bool "
                          f"masks; {', '.join(bad)} is not one")
    return domains
