"""Where text comes from. Every corpus yields documents through a streaming
``datasets`` loader, so local files and hub corpora share one code path: the tests of
local files cover the hub loading too.

- ``PythonStdlib``: the offline default. The ``.py`` sources of the running Python's
  standard library (found through ``sysconfig``; about 1,800 files and 31 MB for
  CPython 3.11), real human-written code, comments and docstrings, on every machine
  that has Python, with no download. ``site-packages`` is excluded so that the corpus
  depends only on the Python version.
- ``LocalFiles``: any local text files or globs.
- ``HubDataset``: a Hugging Face dataset, streamed (needs a network).
"""

from __future__ import annotations

import glob
import hashlib
import json
import sys
import sysconfig
from collections.abc import Iterator, Sequence
from pathlib import Path

from outlier_lab.errors import ConfigError


class Corpus:
    """A source of documents. ``fingerprint`` changes whenever the content may change."""

    def documents(self) -> Iterator[str]:
        raise NotImplementedError

    def fingerprint(self) -> str:
        raise NotImplementedError

    def describe(self) -> str:
        return type(self).__name__


def stream_documents(text_field: str = "text", **load_kwargs) -> Iterator[str]:
    """Documents of ``datasets.load_dataset(..., streaming=True)``, one string each."""
    import datasets

    dataset = datasets.load_dataset(streaming=True, **load_kwargs)
    for example in dataset:
        text = example.get(text_field)
        if text is None:
            raise ConfigError(f"dataset rows have no field {text_field!r}; fields: {sorted(example)}")
        yield text


def _files_fingerprint(files: Sequence[Path]) -> str:
    listing = [(str(p), p.stat().st_size, int(p.stat().st_mtime)) for p in files]
    return hashlib.sha1(json.dumps(listing).encode()).hexdigest()


class LocalFiles(Corpus):
    """Local text files, one document per file; ``paths`` are files or glob patterns."""

    def __init__(self, paths: str | Sequence[str]):
        patterns = [paths] if isinstance(paths, str) else list(paths)
        files: list[Path] = []
        for pattern in patterns:
            matches = sorted(glob.glob(str(Path(pattern).expanduser()), recursive=True))
            if not matches:
                raise ConfigError(
                    f"data file not found: {pattern!r} (resolved from {Path.cwd()}); "
                    "set data.corpus.paths to existing files or globs"
                )
            files += [Path(m).resolve() for m in matches if Path(m).is_file()]
        if not files:
            raise ConfigError(f"no files among data.corpus.paths={patterns}")
        self.files = files

    def documents(self) -> Iterator[str]:
        return stream_documents(
            path="text", data_files=[str(f) for f in self.files], sample_by="document",
            encoding_errors="replace", split="train",
        )

    def fingerprint(self) -> str:
        return _files_fingerprint(self.files)

    def describe(self) -> str:
        return f"{len(self.files)} local file(s), first {self.files[0]}"


class PythonStdlib(LocalFiles):
    """The ``.py`` files of this Python's standard library (no download, no shared files)."""

    def __init__(self):
        root = Path(sysconfig.get_paths()["stdlib"])
        files = sorted(
            p for p in root.rglob("*.py") if not {"site-packages", "dist-packages"} & set(p.relative_to(root).parts)
        )
        if not files:
            raise ConfigError(f"no .py files under the standard library at {root}; use data=text_files")
        self.files = files

    def describe(self) -> str:
        return f"Python {sys.version.split()[0]} standard library ({len(self.files)} .py files)"


class HubDataset(Corpus):
    """A Hugging Face dataset streamed with ``datasets`` (network needed, never by default)."""

    def __init__(self, path: str, name: str | None = None, split: str = "train", text_field: str = "text",
                 data_files: str | Sequence[str] | None = None, revision: str | None = None):
        self.load_kwargs = dict(path=path, name=name, split=split, data_files=data_files, revision=revision)
        self.text_field = text_field

    def documents(self) -> Iterator[str]:
        kwargs = {k: v for k, v in self.load_kwargs.items() if v is not None}
        return stream_documents(text_field=self.text_field, **kwargs)

    def fingerprint(self) -> str:
        return hashlib.sha1(json.dumps([self.load_kwargs, self.text_field], default=str).encode()).hexdigest()

    def describe(self) -> str:
        return f"hub dataset {self.load_kwargs['path']}" + (f"/{self.load_kwargs['name']}" if self.load_kwargs["name"] else "")
