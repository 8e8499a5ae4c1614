"""The residual-peak preset (+experiment=residual_peak, docs/peak.md): it composes to Guo et
al.'s block with a constant learning rate, and a short run of it logs the peak's curve, its
growth rate and its figure."""

from __future__ import annotations

import json

from hydra import compose, initialize_config_dir

from outlier_lab.metrics.growth import PEAK_CURVE, PEAK_GROWTH
from tests.helpers import CONFIGS, compose_train


def test_the_preset_is_guos_block_with_a_constant_lr():
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["paths.output_dir=/tmp/x", "+experiment=residual_peak"])
    model = cfg.model
    assert (model.n_layer, model.n_head, model.n_embd, model.block_size) == (3, 1, 128, 64)
    assert (model.mlp, model.init.embedding_std, model.bias, model.tie_embeddings) == ("relu", 1.0, False, True)
    assert list(cfg.optim.optimizer.betas) == [0.9, 0.99] and cfg.trainer.gradient_clip_val is None
    from outlier_lab.models.lit_gpt import OptimConfig, warmup_cosine

    optim = OptimConfig.from_mapping({**cfg.optim, "optimizer": dict(cfg.optim.optimizer)})
    assert optim.min_lr == optim.lr == 3.0e-3 and optim.warmup_steps == 0
    assert {warmup_cosine(step, 0, 3000, optim.min_lr / optim.lr) for step in (0, 1, 1500, 2999)} == {1.0}
    # the frozen recipe of docs/peak.md's study: a change here changes its every number
    assert (cfg.trainer.max_steps, cfg.trainer.val_check_interval, cfg.data.batch_size, cfg.data.source) == (
        3000, 500, 32, None)
    assert (cfg.callbacks.outlier_monitor.every_n_steps, cfg.callbacks.outlier_monitor.probe_sequences) == (250, 32)
    assert (optim.weight_decay, cfg.torch_threads) == (1.0e-4, 1)


def test_a_short_run_of_the_preset_logs_the_peak_its_growth_rate_and_its_figure(tmp_path):
    import train

    run_dir = tmp_path / "run"
    cfg = compose_train(run_dir, "+experiment=residual_peak", "trainer.max_steps=12", "trainer.val_check_interval=6",
                        "callbacks.outlier_monitor.every_n_steps=2", "callbacks.outlier_monitor.probe_sequences=4",
                        "callbacks.model_summary=null", "eval.compression=[w8a8]", "data.val_batches=1",
                        "data.source_bytes=200000", "model.n_embd=32")
    train.train(cfg)
    from outlier_lab.report.load import read_metrics_csv

    summary = json.loads((run_dir / "summary.json").read_text())
    logged = read_metrics_csv(run_dir / "metrics.csv", wanted=lambda key: "residual_peak" in key)
    last = logged.dropna().iloc[-1]  # the end-of-training probe
    assert summary[PEAK_CURVE] == max(last[f"outliers/act/residual_peak/layer_{layer}"] for layer in range(3))
    assert len(logged[PEAK_CURVE].dropna()) == 7  # steps 0, 2, ..., 12: a curve, not only a final value
    assert isinstance(summary[PEAK_GROWTH], float)  # fitted on the probes of steps 6..12
    assert (run_dir / "plots" / "peak_over_steps.png").stat().st_size > 0
