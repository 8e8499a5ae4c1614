"""Corpora, tokenizers and the data module, on small local files."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from outlier_lab.data.corpora import HubDataset, LocalFiles, PythonStdlib
from outlier_lab.data.datamodule import FixedWindows, RandomWindowBatches, ResumableSampler, TextDataModule
from outlier_lab.data.tokenizers import ByteTokenizer, build_tokenizer
from outlier_lab.errors import ConfigError


@pytest.fixture
def docs(tmp_path):
    texts = [f"document {i}: " + "héllo wörld, " * (50 + i) + "\n" for i in range(30)]
    paths = []
    for i, text in enumerate(texts):
        path = tmp_path / f"doc{i:02d}.txt"
        path.write_text(text, encoding="utf-8")
        paths.append(path)
    return texts, paths


def test_byte_tokenizer_roundtrip():
    tok = ByteTokenizer()
    text = "def f(x):\n    return 'ünïcode'  # ✓"
    (ids,) = tok.encode_batch([text])
    assert ids.dtype == np.uint8 and len(ids) == len(text.encode())
    assert tok.decode(ids) == text


def test_gpt2_tokenizer_never_downloads(tmp_path, monkeypatch):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))  # an empty cache
    with pytest.raises(ConfigError, match="tiktoken"):
        build_tokenizer("gpt2")
    with pytest.raises(ConfigError, match="byte, gpt2"):
        build_tokenizer("chars")


def test_stdlib_corpus_is_real_python_without_site_packages():
    corpus = PythonStdlib()
    assert len(corpus.files) > 500
    assert not any("site-packages" in str(f) for f in corpus.files)
    assert any(f.name == "json" or f.parent.name == "json" for f in corpus.files)


def test_missing_local_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="data file not found: .*nothing.txt"):
        LocalFiles([str(tmp_path / "nothing.txt")])


def test_local_files_stream_through_datasets_unchanged(docs, tmp_path):
    texts, paths = docs
    corpus = LocalFiles(str(tmp_path / "doc*.txt"))
    assert list(corpus.documents()) == texts


def test_hub_loader_on_local_json_files(tmp_path):
    """HubDataset runs the same datasets.load_dataset(streaming=True) call that a hub corpus does."""
    path = tmp_path / "rows.jsonl"
    rows = [{"text": f"row {i}", "id": i} for i in range(5)]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    assert list(HubDataset(path="json", data_files=str(path)).documents()) == [r["text"] for r in rows]
    with pytest.raises(ConfigError, match="no field 'content'"):
        list(HubDataset(path="json", data_files=str(path), text_field="content").documents())


def make_dm(tmp_path, **kwargs):
    kwargs = {"corpus": LocalFiles(str(tmp_path / "doc*.txt")), "block_size": 16, "batch_size": 4,
              "val_every": 5, "chunk_tokens": 64, "val_batches": 2, "cache_dir": str(tmp_path / "cache"), **kwargs}
    dm = TextDataModule(**kwargs)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_tokenized_cache_holds_every_byte_once(docs, tmp_path):
    texts, _ = docs
    dm = make_dm(tmp_path)
    expected = sum(len(t.encode()) + 1 for t in texts)  # + one separator per document
    assert len(dm.train_tokens) + len(dm.val_tokens) == expected
    assert dm.meta["val_tokens"] > 0 and dm.meta["documents"] == len(texts)
    # every 5th chunk of 64 tokens goes to validation
    chunks = sum(-(-(len(t.encode()) + 1) // 64) for t in texts)
    assert dm.meta["val_tokens"] == pytest.approx(expected / 5, rel=0.25)
    assert chunks > 5
    # the unigram loss is the entropy of the training bytes
    counts = np.bincount(np.asarray(dm.train_tokens), minlength=256)
    p = counts[counts > 0] / counts.sum()
    assert dm.unigram_loss == pytest.approx(float(-(p * np.log(p)).sum()), rel=1e-9)


def test_cache_is_reused_and_rebuilt_when_files_change(docs, tmp_path):
    texts, paths = docs
    old_path = make_dm(tmp_path).cache_path
    meta = old_path / "meta.json"
    stamp = meta.stat().st_mtime_ns
    make_dm(tmp_path)
    assert meta.stat().st_mtime_ns == stamp
    paths[0].write_text("changed", encoding="utf-8")
    os.utime(paths[0], (1, 1))
    assert make_dm(tmp_path).cache_path != old_path


def test_corrupt_cache_is_a_clear_error(docs, tmp_path):
    dm = make_dm(tmp_path)
    with open(dm.cache_path / "train.bin", "r+b") as f:
        f.truncate(10)
    fresh = TextDataModule(**{**dict(corpus=dm.corpus, block_size=16, batch_size=4, val_every=5, chunk_tokens=64,
                                     val_batches=2, cache_dir=str(tmp_path / "cache"))})
    with pytest.raises(ConfigError, match="truncated; delete that folder"):
        fresh.setup("fit")


def test_windows_are_deterministic_and_shifted_by_one(docs, tmp_path):
    dm = make_dm(tmp_path)
    data = RandomWindowBatches(dm.train_tokens, 16, 4, num_batches=10, seed=3)
    x, y = data[7]
    x2, _ = data[7]
    assert x.shape == (4, 16) and x.dtype == torch.long
    assert torch.equal(x, x2) and not torch.equal(x, data[6][0])
    assert torch.equal(x[:, 1:], y[:, :-1])
    # data parallel: ranks split the global batch of a single process with batch 4 x 2
    single = RandomWindowBatches(dm.train_tokens, 16, 8, num_batches=10, seed=3)[7][0]
    ranks = [RandomWindowBatches(dm.train_tokens, 16, 4, num_batches=10, seed=3, rank=r, world_size=2)[7][0]
             for r in (0, 1)]
    assert torch.equal(torch.cat(ranks), single) and not torch.equal(ranks[0], ranks[1])
    val = FixedWindows(dm.val_tokens, 16, 8)
    assert torch.equal(val[5][0], FixedWindows(dm.val_tokens, 16, 8)[5][0])
    # windows stay inside the token array and cover its end
    assert val.starts[-1] + 17 == len(dm.val_tokens)


def test_resumable_sampler_skips_consumed_batches():
    sampler = ResumableSampler(10, start=4)
    assert list(sampler) == [4, 5, 6, 7, 8, 9] and len(sampler) == 10


def test_too_little_text_is_a_clear_error(tmp_path):
    (tmp_path / "doc.txt").write_text("tiny")
    with pytest.raises(ConfigError, match="fewer than block_size"):
        make_dm(tmp_path, corpus=LocalFiles(str(tmp_path / "doc.txt")))


def test_bos_starts_every_window_with_an_extra_token(docs, tmp_path):
    dm = make_dm(tmp_path)
    with_bos = TextDataModule(corpus=dm.corpus, block_size=16, batch_size=4, val_every=5, chunk_tokens=64,
                              val_batches=2, cache_dir=str(tmp_path / "cache"), bos=True)
    with_bos.setup("fit")
    assert with_bos.vocab_size == dm.vocab_size + 1 == 257 and with_bos.decode_token(256) == "<bos>"
    plain_x, plain_y = RandomWindowBatches(dm.train_tokens, 16, 4, num_batches=3, seed=1)[2]
    x, y = RandomWindowBatches(dm.train_tokens, 16, 4, num_batches=3, seed=1, bos=256)[2]
    assert (x[:, 0] == 256).all() and x.shape == y.shape == (4, 16)
    # the same text: inputs after the bos are the plain window's first tokens, targets the plain inputs
    assert torch.equal(x[:, 1:], plain_x[:, :-1]) and torch.equal(y, plain_x)
    val_x, val_y = next(iter(with_bos.val_dataloader()))
    assert (val_x[:, 0] == 256).all() and (val_y < 256).all()
    assert (with_bos.probe_batch(2)[:, 0] == 256).all()
