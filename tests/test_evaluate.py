"""Compression protocols after training (train.py) and on checkpoints (evaluate.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

import evaluate
import train
from outlier_lab.errors import ConfigError
from outlier_lab.models.gpt import GPT
from tests.helpers import CONFIGS, TINY, compose_train, read_metric

ROOT = Path(__file__).resolve().parents[1]
PROTOCOLS = list(compose_train(Path("/tmp/unused")).eval.compression)  # the default protocols


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, corpus_glob, cache_dir):
    run = tmp_path_factory.mktemp("trained")
    cfg = compose_train(run, *TINY, "data=text_files", f"data.corpus.paths=[{corpus_glob}]", "trainer.max_steps=40",
                        "trainer.val_check_interval=20", "optim.lr=1e-2", cache_dir=cache_dir)
    train.train(cfg)
    return run


def compose_eval(tmp_path, *overrides):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(config_name="evaluate", overrides=[f"paths.output_dir={tmp_path}", *overrides])


def test_training_ends_with_every_default_protocol(trained_run):
    summary = json.loads((trained_run / "summary.json").read_text())
    fp = summary["compress/fp/ppl"]
    assert fp == pytest.approx(torch.exp(torch.tensor(read_metric(trained_run, "val/loss")[40])).item(), rel=1e-4)
    for name in PROTOCOLS:
        assert summary[f"compress/{name}/ppl_ratio"] == pytest.approx(summary[f"compress/{name}/ppl"] / fp)
        assert read_metric(trained_run, f"compress/{name}/ppl")[40] == pytest.approx(summary[f"compress/{name}/ppl"])
    assert summary["compress/prune50/ppl_ratio"] > 1.0  # pruning half the weights costs something


def test_evaluate_py_on_a_training_checkpoint(trained_run, tmp_path):
    """No data given: the checkpoint's own data config (corpus, windows) is used."""
    cfg = compose_eval(tmp_path, f"ckpt={trained_run / 'checkpoints' / 'last.ckpt'}")
    results = evaluate.evaluate(cfg)
    summary = json.loads((trained_run / "summary.json").read_text())
    for name in PROTOCOLS:  # the same model, data and calibration as at the end of training
        assert results[f"compress/{name}/ppl"] == pytest.approx(summary[f"compress/{name}/ppl"], rel=1e-5)
    assert json.loads((tmp_path / "summary.json").read_text())["compress/w8a8/ppl"] == results["compress/w8a8/ppl"]


def pre_namespace(config):
    """``config`` with its class paths as checkpoints wrote them before the packages moved under
    outlier_lab (``outlier_lab.models.gpt.GPT`` -> ``models.gpt.GPT``, ``outlier_lab.sweep`` ->
    ``outliers.sweep``), written independently of the code that upgrades them."""
    if isinstance(config, dict):
        out = {k: pre_namespace(v) for k, v in config.items()}
        if isinstance(out.get("_target_"), str) and out["_target_"].startswith("outlier_lab."):
            rest = out["_target_"].removeprefix("outlier_lab.")
            out["_target_"] = rest if rest.split(".")[0] in ("models", "data", "kernels") else f"outliers.{rest}"
        return out
    return [pre_namespace(v) for v in config] if isinstance(config, list) else config


def test_a_checkpoint_from_before_the_namespace_still_evaluates(trained_run, tmp_path):
    checkpoint = torch.load(trained_run / "checkpoints" / "last.ckpt", weights_only=True)
    old = {**checkpoint, "hyper_parameters": pre_namespace(checkpoint["hyper_parameters"]),
           "data_config": pre_namespace(checkpoint["data_config"])}
    assert old["data_config"]["_target_"] == "data.datamodule.TextDataModule"
    assert old["hyper_parameters"]["optim"]["optimizer"]["_target_"] == "torch.optim.AdamW"  # not ours: kept
    torch.save(old, tmp_path / "old.ckpt")
    results = evaluate.evaluate(compose_eval(tmp_path / "out", f"ckpt={tmp_path / 'old.ckpt'}"))
    summary = json.loads((trained_run / "summary.json").read_text())
    assert results["compress/w8a8/ppl"] == pytest.approx(summary["compress/w8a8/ppl"], rel=1e-5)


@pytest.mark.slow
def test_a_bos_checkpoint_is_evaluated_with_its_bos(tmp_path, corpus_glob, cache_dir):
    """A checkpoint trained with data.bos=true carries that: evaluate.py uses BOS windows unless
    told otherwise (+data.bos=false gives other windows, so another perplexity)."""
    run = tmp_path / "run"
    cfg = compose_train(run, *TINY, "data=text_files", f"data.corpus.paths=[{corpus_glob}]", "data.bos=true",
                        "trainer.max_steps=20", "trainer.val_check_interval=20", "eval.compression=[w8_absmax]",
                        cache_dir=cache_dir)
    train.train(cfg)
    ckpt = run / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, weights_only=True)["data_config"]["bos"] is True
    trained = json.loads((run / "summary.json").read_text())["compress/fp/ppl"]
    same = evaluate.evaluate(compose_eval(tmp_path / "a", f"ckpt={ckpt}", "eval.compression=[w8_absmax]"))
    assert same["compress/fp/ppl"] == pytest.approx(trained, rel=1e-5)
    other = evaluate.evaluate(compose_eval(tmp_path / "b", f"ckpt={ckpt}", "+data.bos=false",
                                           "eval.compression=[w8_absmax]"))
    assert abs(other["compress/fp/ppl"] / trained - 1) > 1e-3


def test_evaluate_py_into_a_run_directory_adds_to_its_summary(trained_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    before = json.loads((run / "summary.json").read_text())
    evaluate.evaluate(compose_eval(run, f"ckpt={run / 'checkpoints' / 'last.ckpt'}", "eval.compression=[prune50]"))
    after = json.loads((run / "summary.json").read_text())
    assert after["convergence/final_val_loss"] == before["convergence/final_val_loss"]  # kept
    assert after["compress/prune50/ppl"] == pytest.approx(before["compress/prune50/ppl"], rel=1e-5)
    assert after["compress/ckpt"].endswith("last.ckpt")


def test_a_nanogpt_checkpoint_needs_a_data_choice(tmp_path):
    torch.manual_seed(0)
    model = GPT(vocab_size=256, block_size=32, n_layer=1, n_head=2, n_embd=32)
    path = tmp_path / "ckpt.pt"
    torch.save({"model": model.state_dict(), "model_args": {"n_head": 2}}, path)
    with pytest.raises(ConfigError, match="carries no data config.*data=NAME"):
        evaluate.evaluate(compose_eval(tmp_path, f"ckpt={path}"))


def test_evaluate_py_on_a_nanogpt_checkpoint(tmp_path, corpus_glob, cache_dir):
    torch.manual_seed(0)
    reference = GPT(vocab_size=256, block_size=32, n_layer=2, n_head=2, n_embd=32, attention={"name": "explicit_scale"})
    path = tmp_path / "ckpt.pt"
    torch.save({"model": reference.state_dict(), "model_args": {"n_head": 2}, "iter_num": 7}, path)
    cfg = compose_eval(tmp_path, f"ckpt={path}", "nanogpt.attention=explicit_scale", "data=text_files",
                       f"data.corpus.paths=[{corpus_glob}]", "data.val_every=10", "data.batch_size=4",
                       "data.val_batches=2", f"data.cache_dir={cache_dir}", "eval.compression=[w8_absmax]")
    results = evaluate.evaluate(cfg)
    assert 200 < results["compress/fp/ppl"] < 320  # an untrained byte model: about uniform over 256
    assert set(results) == {"compress/fp/ppl", "compress/w8_absmax/ppl", "compress/w8_absmax/ppl_ratio",
                            "compress/w8_absmax/kl", "compress/w8_absmax/top1_agreement"}


@pytest.mark.parametrize(
    "args, message",
    [
        (["ckpt=/no/such.ckpt"], "checkpoint not found: /no/such.ckpt"),
        (["ckpt=README.md"], "corrupt or not a safe checkpoint"),
        (["ckpt=README.md", "eval.compression=[w3]"], "unknown compression protocol(s) ['w3']; valid: w8a8"),
    ],
)
def test_evaluate_py_errors_are_clear(tmp_path, args, message):
    result = subprocess.run([sys.executable, "evaluate.py", *args, f"hydra.run.dir={tmp_path}"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120, env=dict(os.environ))
    out = " ".join((result.stdout + result.stderr).split())
    assert result.returncode == 2 and message in out and "Traceback" not in out, out


def test_unknown_protocol_fails_before_training(tmp_path):
    with pytest.raises(ConfigError, match="unknown compression protocol"):
        train.train(compose_train(tmp_path, *TINY, "eval.compression=[w8a8,int3]"))
    assert not (tmp_path / "checkpoints").exists()
