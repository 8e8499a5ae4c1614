"""The step budget (outlier_lab/trainer/step_budget.py): a step that cannot fit the machine is
refused before training, in one line; a step that takes minutes is announced."""

from __future__ import annotations

import pytest
import torch

import train
from outlier_lab.errors import ConfigError
from outlier_lab.trainer import step_budget
from outlier_lab.trainer.step_budget import Step, check_step
from tests.helpers import compose_train

NANO = dict(n_layer=4, n_head=4, n_embd=128, vocab_size=256, parameters=800_000, batch_size=16)


def test_the_estimate_counts_what_a_step_keeps():
    step = Step(**NANO, block_size=1000, stores_attention_maps=True, probe_sequences=8)
    b, t, c, layers, heads = 16, 1000, 128, 4, 4
    by_hand = (layers * b * t * c * 17 * 4 + 2 * layers * b * heads * t * t * 4 + 2 * b * t * 256 * 4
               + 4 * 800_000 * 4)
    assert step.train_bytes() == by_hand
    assert step.probe_bytes() == layers * 8 * heads * t * t * 4 + 8 * heads * t * t * 4
    fused = Step(**NANO, block_size=1000, stores_attention_maps=False)
    assert step.train_bytes() - fused.train_bytes() == 2 * layers * b * heads * t * t * 4
    assert fused.probe_bytes() == 0  # no monitor, no probe


def test_a_block_size_typo_is_refused_before_training(monkeypatch):
    monkeypatch.setattr(step_budget, "available_bytes", lambda device: 24 * 2**30)
    typo = Step(**NANO, block_size=100_000, stores_attention_maps=False, probe_sequences=8)
    with pytest.raises(ConfigError, match=r"one training step at data.batch_size=16 needs about 5\d\.\d GiB at "
                                          r"model.block_size=100000 .*more than the 24.0 GiB available on cpu"):
        check_step(typo, torch.device("cpu"), warn=pytest.fail)
    probe_only = Step(**{**NANO, "batch_size": 1}, block_size=20_000, stores_attention_maps=False, probe_sequences=8)
    assert probe_only.train_bytes() < 24 * 2**30 < probe_only.probe_bytes()
    with pytest.raises(ConfigError, match="the monitor's probe of 8 windows needs about 2[0-9][0-9].[0-9] GiB"):
        check_step(probe_only, torch.device("cpu"), warn=pytest.fail)
    eager = Step(**NANO, block_size=100_000, stores_attention_maps=True)
    with pytest.raises(ConfigError, match="one training step at data.batch_size=16 needs"):
        check_step(eager, torch.device("cpu"), warn=pytest.fail)


def test_a_step_of_minutes_is_announced_and_the_default_is_not(monkeypatch):
    monkeypatch.setattr(step_budget, "matmul_flops_per_second", lambda device: 1e9)
    warnings = []
    slow = Step(**NANO, block_size=4096, stores_attention_maps=False)  # ~1e13 FLOPs at 1 GFLOP/s
    check_step(slow, torch.device("cpu"), warn=warnings.append)
    assert len(warnings) == 1 and "one training step will take about" in warnings[0]
    assert "model.block_size=4096" in warnings[0]
    check_step(Step(**NANO, block_size=256, stores_attention_maps=False, probe_sequences=8), torch.device("cpu"),
               warn=pytest.fail)  # the default run: 1.6e10 FLOPs, 16 s even at 1 GFLOP/s


def test_train_refuses_the_typo_before_reading_any_data(tmp_path, monkeypatch):
    monkeypatch.setattr(step_budget, "available_bytes", lambda device: 24 * 2**30)
    cfg = compose_train(tmp_path, "model.block_size=100000", "logger=csv")
    with pytest.raises(ConfigError, match="model.block_size=100000"):
        train.train(cfg)
    assert not (tmp_path / "checkpoints").exists()
