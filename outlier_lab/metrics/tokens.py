"""Token classes for attributing outliers to positions, as the seed paper's scripts do
(An et al. 2025, an-yongqi/systematic-outliers, pos_attention_outliers.py and
pos_activation_outliers_layer.py): each token id is decoded by the run's own tokenizer and
stripped; a punctuation mark is a *strong delimiter*, a whitespace-only token or a
semantically weak word (the, of, and, a digit, ...) is *weak*; the first position of a
sequence is *initial* whatever its token; everything else is *other*.

The classes come from the tokenizer once per run, so byte-level and BPE vocabularies are
treated alike (a hard-coded byte id would name an unrelated BPE token)."""

from __future__ import annotations

from collections.abc import Callable

import torch

CLASSES = ("initial", "strong", "weak", "other")
INITIAL, STRONG, WEAK, OTHER = range(4)

STRONG_DELIMITERS = frozenset({
    ".", ",", ";", ":", "!", "?", "-", "--", "---", "'", '"', "(", ")", "[", "]", "{", "}", "/", "\\",
    "|", "*", "&", "^", "%", "$", "#", "@", "~", "`", "…",
})
WEAK_TOKENS = frozenset({
    "", "and", "from", "of", "1", "2", "3", "4", "5", "6", "7", "8", "9", "the", "a", "an", "in", "on",
    "at", "for", "with", "is", "was", "are", "were", "to", "by", "as", "that", "this", "it", "but", "or",
    "if", "not",
})


def token_class(text: str) -> int:
    """STRONG, WEAK or OTHER for one decoded token (the empty string, i.e. whitespace only, is WEAK)."""
    stripped = text.strip()
    if stripped in STRONG_DELIMITERS:
        return STRONG
    if stripped.lower() in WEAK_TOKENS:
        return WEAK
    return OTHER


def vocabulary_classes(decode: Callable[[int], str], vocab_size: int) -> torch.Tensor:
    """(vocab_size,) int8: the class of every token id, from ``decode(id) -> text``."""
    return torch.tensor([token_class(decode(i)) for i in range(vocab_size)], dtype=torch.int8)


def position_classes(tokens: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """(B, T) class of every position: INITIAL at position 0, else the class of its token."""
    out = classes.to(tokens.device)[tokens.long()].long()
    out[:, 0] = INITIAL
    return out
