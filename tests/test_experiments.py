"""The experiment configs: the paper's GPT-2 recipe and the CPU study compose to what they promise."""

from __future__ import annotations

import hydra
import pytest

import train
from tests.helpers import compose_train, read_metric


def test_gpt2_paper_recipe_matches_the_seed_paper(tmp_path):
    cfg = compose_train(tmp_path, "+experiment=gpt2_paper")
    tokens_per_step = cfg.data.batch_size * cfg.model.block_size * cfg.trainer.accumulate_grad_batches
    assert tokens_per_step == 491_520
    assert (cfg.model.n_layer, cfg.model.n_embd, cfg.model.n_head) == (12, 768, 12)
    assert cfg.data.corpus.path == "Skylion007/openwebtext" and cfg.data.tokenizer == "gpt2"
    o = cfg.optim
    assert (o.lr, o.min_lr, list(o.betas), o.weight_decay, o.warmup_steps, o.decay_steps) == (
        6e-4, 6e-5, [0.9, 0.95], 0.1, 2000, 50_000)
    assert cfg.trainer.max_steps == 50_000 and cfg.trainer.precision == "bf16-mixed"
    assert cfg.trainer.accelerator == "gpu"
    # validation every 2000 optimizer steps, counted in micro-batches, so the last one is at 50k
    assert (cfg.trainer.max_steps * cfg.trainer.accumulate_grad_batches) % cfg.trainer.val_check_interval == 0
    model = hydra.utils.instantiate(cfg.model, vocab_size=50257)
    assert 123e6 < model.num_parameters() < 125e6


@pytest.mark.slow
def test_gpt2_paper_recipe_starts_on_cpu_with_a_local_corpus(tmp_path, corpus_glob, cache_dir):
    """OpenWebText's loader reads local files instead (datasets' "text" builder), bytes stand
    in for BPE (tiktoken's files need a network), and only the sizes that make CPU feasible shrink."""
    cfg = compose_train(
        tmp_path / "run", "+experiment=gpt2_paper", "data.corpus.path=text", f"data.corpus.data_files=[{corpus_glob}]",
        "data.tokenizer=byte", "trainer.accelerator=cpu", "model.block_size=64", "data.batch_size=2",
        "data.val_batches=1", "trainer.accumulate_grad_batches=2", "trainer.max_steps=2",
        "trainer.val_check_interval=4", "trainer.log_every_n_steps=1", "logger=csv", "eval.compression=[]",
        "callbacks.progress_bar=null", "callbacks.model_summary=null", "callbacks.outlier_monitor.plots=false",
        cache_dir=cache_dir,
    )
    final = train.train(cfg)
    lr = read_metric(tmp_path / "run", "train/lr/pg1")
    assert lr[0] == pytest.approx(6e-4 / 2000)  # the recipe's 2000-step warmup, not a short-run cap
    assert final["val/loss"] < 5.6  # finite and not worse than a uniform guess over bytes
