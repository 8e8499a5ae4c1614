"""compile=true: the compiled training loss against eager, its fallback, and its option."""

from __future__ import annotations

import pytest
import torch

import train
from outlier_lab.errors import ConfigError
from outlier_lab.models.compile import CompiledLoss, wants_compile
from outlier_lab.models.attention import registered_names
from outlier_lab.models.gpt import GPT
from tests.helpers import TINY, compose_train, read_metric


@pytest.mark.slow
def test_compiled_training_matches_eager_over_20_steps(tmp_path, corpus_glob, cache_dir):
    """Same seed, data and steps: the 20 training losses agree to fp32 noise, and the checkpoint
    holds the eager model's parameter names (resume and analyze.py read it unchanged)."""
    common = (*TINY, "data=text_files", f"data.corpus.paths=[{corpus_glob}]", "trainer.max_steps=20",
              "trainer.val_check_interval=20", "optim.warmup_steps=2", "eval.compression=[]")
    runs = {}
    for option in ("false", "true"):
        train.train(compose_train(tmp_path / option, *common, f"compile={option}", cache_dir=cache_dir))
        runs[option] = read_metric(tmp_path / option, "train/loss")
    assert sorted(runs["true"]) == list(range(20))
    for step in range(20):
        assert runs["true"][step] == pytest.approx(runs["false"][step], rel=2e-5, abs=1e-6), step
    assert runs["true"][19] < runs["true"][0] - 0.1  # it trained
    names = {option: set(torch.load(tmp_path / option / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"])
             for option in runs}
    assert names["true"] == names["false"] and not any("_orig_mod" in n for n in names["true"])


def failing_backend(graph, example_inputs):
    raise RuntimeError("this backend cannot compile anything")


def test_a_model_that_cannot_compile_falls_back_to_eager_with_one_warning():
    torch.manual_seed(0)
    model = GPT(vocab_size=16, n_layer=1, n_embd=16, n_head=2, block_size=8, attention={"name": "softpick"})
    x, y = torch.randint(0, 16, (2, 8)), torch.randint(0, 16, (2, 8))
    loss = CompiledLoss(model, "attention=softpick")
    loss.compiled = torch.compile(model.loss, backend=failing_backend)
    with pytest.warns(UserWarning, match=r"compile: attention=softpick cannot be compiled .*training runs eager"):
        first = loss(x, y)
    assert loss.compiled is None
    assert torch.equal(first, model.loss(x, y)) and torch.equal(loss(x, y), first)


@pytest.mark.parametrize("option, device, expected", [
    ("auto", "cpu", False), ("auto", "cuda", True), (True, "cpu", True), (False, "cuda", False)])
def test_compile_auto_means_cuda_only(option, device, expected):
    assert wants_compile(option, torch.device(device)) is expected


@pytest.mark.parametrize("option", ["maybe", 1, None])
def test_a_bad_compile_value_is_one_clear_line(option):
    with pytest.raises(ConfigError, match=r"compile=.*: choose one of auto, true, false"):
        wants_compile(option, torch.device("cpu"))


def test_models_compiled_one_after_another_all_stay_compiled(monkeypatch):
    """dynamo caches per code object (GPT.loss), guarded on the attention class: without a
    fresh cache per model, the 9th variant compiled in a process (a sweep on the basic
    launcher) would silently run eager (its recompile limit is 8)."""
    import functools

    from torch._dynamo.utils import counters

    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))  # tracing only: fast
    x, y = torch.randint(0, 16, (2, 8)), torch.randint(0, 16, (2, 8))
    names = registered_names()
    assert len(names) > 8
    for name in names:
        model = GPT(vocab_size=16, n_layer=1, n_embd=16, n_head=2, block_size=8, attention={"name": name})
        traced = counters["frames"]["ok"]
        CompiledLoss(model, name)(x, y)
        assert counters["frames"]["ok"] > traced, f"{name} ran eager"
