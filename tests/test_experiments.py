"""The experiment configs: the paper's GPT-2 recipe and the CPU study compose to what they promise."""

from __future__ import annotations

import hydra
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
import pytest

import train
from tests.helpers import CONFIGS, compose_train, read_metric


def test_gpt2_paper_recipe_matches_the_seed_paper(tmp_path):
    cfg = compose_train(tmp_path, "+experiment=gpt2_paper")
    tokens_per_step = cfg.data.batch_size * cfg.model.block_size * cfg.trainer.accumulate_grad_batches
    assert tokens_per_step == 491_520
    assert (cfg.model.n_layer, cfg.model.n_embd, cfg.model.n_head) == (12, 768, 12)
    assert cfg.data.corpus.path == "Skylion007/openwebtext" and cfg.data.tokenizer == "gpt2"
    assert cfg.data.max_tokens is None  # the whole corpus, not the 1B-token cap of data=openwebtext
    o = cfg.optim
    assert (o.name, o.lr, o.min_lr, list(o.optimizer.betas), o.weight_decay, o.warmup_steps, o.decay_steps) == (
        "adamw", 6e-4, 6e-5, [0.9, 0.95], 0.1, 2000, 600_000)
    assert cfg.model.bias is False  # the seed code trains without biases
    assert cfg.trainer.max_steps == 50_000 and cfg.trainer.precision == "bf16-mixed"
    assert cfg.trainer.accelerator == "gpu"
    # validation every 2000 optimizer steps, counted in micro-batches, so the last one is at 50k
    assert (cfg.trainer.max_steps * cfg.trainer.accumulate_grad_batches) % cfg.trainer.val_check_interval == 0
    model = hydra.utils.instantiate(cfg.model, vocab_size=50257)
    assert 123e6 < model.num_parameters() < 125e6
    from outlier_lab.models.lit_gpt import warmup_cosine  # at 50k of a 600k cosine the LR is still ~98% of its peak
    ratio = o.min_lr / o.lr
    assert warmup_cosine(50_000, o.warmup_steps, o.decay_steps, ratio) == pytest.approx(0.986, abs=0.001)


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


STUDY_VARIANTS = {"softmax", "v_bias", "ca_bias", "attn_bias", "explicit_scale", "sigmoid", "gated", "gated_g1",
                  "softmax1", "sink", "softpick", "clipped_softmax", "differential"}


def test_cpu_study_sweeps_every_variant_on_one_recipe(tmp_path):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        hydra_cfg = compose(config_name="train", overrides=["+experiment=cpu_study"], return_hydra_config=True).hydra
    params = hydra_cfg.sweeper.params
    assert set(params.attention.split(",")) == STUDY_VARIANTS and len(params.seed.split(",")) >= 2

    def recipe(variant):
        cfg = OmegaConf.to_container(compose_train(tmp_path, "+experiment=cpu_study", f"attention={variant}"),
                                     resolve=True)
        for key in ("attention", "run_name", "logger"):  # the logger's run name and tags carry the variant
            cfg.pop(key)
        cfg["model"].pop("attention")
        cfg["module"]["model"].pop("attention")
        return cfg

    baseline = recipe("softmax")
    assert baseline["data"]["bos"] and baseline["model"]["style"] == "llama"
    for variant in sorted(STUDY_VARIANTS - {"softmax"}):
        assert recipe(variant) == baseline, f"the study's recipe differs for {variant}"
