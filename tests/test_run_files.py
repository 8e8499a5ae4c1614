"""The files a run reads and writes, without training: checkpoints (outlier_lab/models/checkpoint.py),
metrics.csv across resumption (outlier_lab/trainer/csv_logger.py), the optimizer settings that a
checkpoint carries (outlier_lab/models/lit_gpt.py), and the loggers that train.py builds."""

from __future__ import annotations

import csv

import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from omegaconf import OmegaConf

import train
from outlier_lab.errors import ConfigError
from outlier_lab.models.checkpoint import load_checkpoint
from outlier_lab.trainer.csv_logger import ResumableCSVLogger
from outlier_lab.models.lit_gpt import LitGPT
from tests.helpers import compose_train

TINY_MODEL = dict(vocab_size=16, block_size=8, n_layer=1, n_head=1, n_embd=8)


def one_line_error(path, **kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        load_checkpoint(path, "a test checkpoint", **kwargs)
    message = str(info.value)
    assert "\n" not in message and str(path) in message and "expected a test checkpoint" in message, message
    return message


def test_load_checkpoint_errors_name_the_path_and_what_is_expected(tmp_path):
    assert one_line_error(tmp_path / "missing.ckpt").startswith("checkpoint not found:")
    (tmp_path / "text.ckpt").write_text("not a checkpoint")
    assert "corrupt or not a safe checkpoint" in one_line_error(tmp_path / "text.ckpt")
    assert "corrupt" in one_line_error(tmp_path / "text.ckpt", mmap=True)
    torch.save([torch.zeros(1)], tmp_path / "list.ckpt")
    assert "holds a list, not a dict" in one_line_error(tmp_path / "list.ckpt")
    torch.save({"state_dict": {}}, tmp_path / "no_loops.ckpt")
    assert "has no loops" in one_line_error(tmp_path / "no_loops.ckpt", required_keys=("state_dict", "loops"))


def test_load_checkpoint_refuses_arbitrary_objects(tmp_path):
    torch.save({"model": {}, "callback": CSVLogger(tmp_path)}, tmp_path / "object.ckpt")
    assert "not a safe checkpoint" in one_line_error(tmp_path / "object.ckpt")


def test_load_checkpoint_returns_the_dict(tmp_path):
    torch.save({"state_dict": {"w": torch.ones(2)}, "loops": {}, "global_step": 3}, tmp_path / "ok.ckpt")
    checkpoint = load_checkpoint(tmp_path / "ok.ckpt", "x", required_keys=("state_dict", "loops"), mmap=True)
    assert checkpoint["global_step"] == 3 and checkpoint["state_dict"]["w"].tolist() == [1.0, 1.0]


def test_optim_keys_are_checked_and_saved_as_plain_containers(tmp_path):
    optim = OmegaConf.to_container(compose_train(tmp_path).optim, resolve=True)
    with pytest.raises(ConfigError, match=r"unknown optim keys \['lr_max'\]; valid: lr, min_lr, weight_decay"):
        LitGPT(TINY_MODEL, {**optim, "lr_max": 1.0})
    with pytest.raises(ConfigError, match=r"missing optim keys \['decay_steps'\]"):
        LitGPT(TINY_MODEL, {k: v for k, v in optim.items() if k != "decay_steps"})
    module = LitGPT(TINY_MODEL, {**optim, "optimizer": {**optim["optimizer"], "betas": (0.8, 0.9)}})
    assert module.hparams["optim"] == {**optim, "optimizer": {**optim["optimizer"], "betas": [0.8, 0.9]}}
    torch.save({"hyper_parameters": dict(module.hparams)}, tmp_path / "hp.ckpt")
    restored = LitGPT(**torch.load(tmp_path / "hp.ckpt", weights_only=True)["hyper_parameters"])
    assert restored.optim == module.optim


@pytest.mark.parametrize("logger", ["csv", "none"])
def test_csv_and_none_add_no_logger_to_the_one_metrics_csv(tmp_path, logger):
    loggers = train.build_loggers(compose_train(tmp_path, f"logger={logger}"), tmp_path, None)
    assert [type(lg) for lg in loggers] == [ResumableCSVLogger]


def write_metrics(path, rows):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["step", "train/loss", "val/loss"])
        writer.writeheader()
        writer.writerows(rows)


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# Lightning warns that it deletes the old file; the logger under test writes the kept rows back.
ignore_deletion_warning = pytest.mark.filterwarnings("ignore:Experiment logs directory")
OLD_ROWS = [{"step": s, "train/loss": f"{5 - s / 10}", "val/loss": "4.5" if s == 1 else ""} for s in range(4)]


@ignore_deletion_warning
def test_resumed_metrics_keep_the_rows_up_to_the_resume_step(tmp_path):
    write_metrics(tmp_path / "metrics.csv", OLD_ROWS)
    logger = ResumableCSVLogger(save_dir=tmp_path, name="", version="", resume_step=1)
    logger.experiment  # noqa: B018  (creating the writer restores the kept rows at once)
    assert read_rows(tmp_path / "metrics.csv") == [{k: str(v) for k, v in r.items()} for r in OLD_ROWS[:2]]
    logger.log_metrics({"train/loss": 4.25, "train/lr": 0.5}, step=2)
    logger.finalize("success")
    rows = read_rows(tmp_path / "metrics.csv")
    assert [r["step"] for r in rows] == ["0", "1", "2"] and rows[1]["val/loss"] == "4.5"
    assert rows[2]["train/loss"] == "4.25" and rows[2]["train/lr"] == "0.5" and rows[0]["train/lr"] == ""


@ignore_deletion_warning
def test_a_fresh_start_replaces_old_metrics(tmp_path):
    write_metrics(tmp_path / "metrics.csv", OLD_ROWS)
    logger = ResumableCSVLogger(save_dir=tmp_path, name="", version="", resume_step=None)
    logger.log_metrics({"train/loss": 1.5}, step=0)
    logger.finalize("success")
    assert read_rows(tmp_path / "metrics.csv") == [{"step": "0", "train/loss": "1.5"}]
