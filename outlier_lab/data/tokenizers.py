"""Tokenizers: bytes (vocabulary 256, the offline default) and GPT-2 BPE via tiktoken."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np

from outlier_lab.errors import ConfigError

TOKENIZERS = ("byte", "gpt2")


class ByteTokenizer:
    """UTF-8 bytes as tokens. Document separator: byte 0, which never occurs in text."""

    name = "byte"
    vocab_size = 256
    eot = 0
    dtype = np.uint8

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return [np.frombuffer(t.encode("utf-8", errors="replace"), dtype=np.uint8) for t in texts]

    def decode(self, ids) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


class Gpt2Tokenizer:
    """GPT-2 BPE through tiktoken, from its local cache only: this never downloads."""

    name = "gpt2"
    vocab_size = 50257
    dtype = np.uint16
    # tiktoken caches each file under sha1(source address); these are the two GPT-2 files.
    _FILES = ("gpt-2/encodings/main/vocab.bpe", "gpt-2/encodings/main/encoder.json")
    _HOST = "https://openaipublic.blob.core.windows.net/"

    def __init__(self):
        try:
            import tiktoken
        except ImportError:
            raise ConfigError("data.tokenizer=gpt2 needs tiktoken: pip install '.[bpe]'") from None
        missing = [f for f in self._FILES if not self._cached_path(f).is_file()]
        if missing:
            raise ConfigError(
                f"data.tokenizer=gpt2: tiktoken's GPT-2 files are not in its cache ({self._cache_dir()}); "
                "this run does not download them. On a machine with a network run once: "
                "python -c \"import tiktoken; tiktoken.get_encoding('gpt2')\" (set TIKTOKEN_CACHE_DIR to keep "
                "the cache somewhere permanent), or use data.tokenizer=byte"
            )
        self._enc = tiktoken.get_encoding("gpt2")
        self.eot = self._enc.eot_token

    @staticmethod
    def _cache_dir() -> Path:
        env = os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get("DATA_GYM_CACHE_DIR")
        return Path(env) if env else Path(tempfile.gettempdir()) / "data-gym-cache"

    @classmethod
    def _cached_path(cls, file: str) -> Path:
        return cls._cache_dir() / hashlib.sha1((cls._HOST + file).encode()).hexdigest()

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return [np.asarray(ids, dtype=np.uint16) for ids in self._enc.encode_ordinary_batch(texts)]

    def decode(self, ids) -> str:
        return self._enc.decode([int(i) for i in ids])


def build_tokenizer(name: str):
    if name == "byte":
        return ByteTokenizer()
    if name == "gpt2":
        return Gpt2Tokenizer()
    raise ConfigError(f"unknown tokenizer {name!r}; choose one of {', '.join(TOKENIZERS)}")
