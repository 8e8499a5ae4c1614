"""analyze.py: the monitor's metrics on any checkpoint, by the monitor's own code."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

import analyze
import train
from outlier_lab.models.gpt import GPT
from tests.helpers import CONFIGS, TINY, compose_train, read_metric
from tests.probe_figures import capture_saved_figures, check_probe_figures

ROOT = Path(__file__).resolve().parents[1]
HEADLINE = ("outliers/attn/sink_rate", "outliers/act/avg_kurtosis", "outliers/act/max_inf_norm",
            "outliers/weight/down_proj_col_ratio/max", "outliers/attn/first_token_share/max",
            "outliers/act/top1_over_median/max", "outliers/attn/outlier_keys/initial", "outliers/act/top1/layer_1")


def compose_analyze(out, *overrides):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(config_name="analyze", overrides=[f"paths.output_dir={out}", *overrides])


@pytest.mark.slow
@pytest.mark.parametrize("bos", [False, True], ids=["nobos", "bos"])
def test_analyze_a_checkpoint_gives_the_monitors_last_probe(tmp_path, corpus_glob, cache_dir, bos, monkeypatch):
    saved = capture_saved_figures(monkeypatch)
    run = tmp_path / "run"
    cfg = compose_train(run, *TINY, "data=text_files", f"data.corpus.paths=[{corpus_glob}]", f"data.bos={bos}",
                        "trainer.max_steps=20", "trainer.val_check_interval=20", "eval.compression=[]",
                        "callbacks.outlier_monitor.probe_sequences=4", cache_dir=cache_dir)
    train.train(cfg)
    values = analyze.analyze(compose_analyze(tmp_path / "analysis", f"ckpt={run / 'checkpoints' / 'last.ckpt'}",
                                             "windows=4"))
    written = json.loads((tmp_path / "analysis" / "analysis.json").read_text())
    assert written["windows"] == 4 and written["window"] == 32
    for key in HEADLINE:
        logged = read_metric(run, key)[20]  # the monitor's probe at the end of training
        assert values[key] == pytest.approx(logged, rel=1e-5, abs=1e-7), key
        assert written[key] == pytest.approx(values[key])
    assert (tmp_path / "analysis" / "plots" / "attention_maps.png").is_file()
    check_probe_figures(saved[-1], values, n_layer=cfg.model.n_layer)


def nanogpt_checkpoint(tmp_path, vocab_size=256):
    torch.manual_seed(0)
    model = GPT(vocab_size=vocab_size, block_size=16, n_layer=2, n_head=2, n_embd=32, attention={"name": "ca_bias"})
    path = tmp_path / "ckpt.pt"
    torch.save({"model": model.state_dict(), "model_args": {"n_head": 2}}, path)
    return model, path


def test_analyze_a_nanogpt_checkpoint_on_a_text(tmp_path):
    model, path = nanogpt_checkpoint(tmp_path)
    text = tmp_path / "text.txt"
    text.write_text("Summer is warm. Winter is cold.\n" * 10)
    values = analyze.analyze(compose_analyze(tmp_path / "out", f"ckpt={path}", f"text={text}",
                                             "nanogpt.attention=ca_bias", "windows=3"))
    ids = torch.tensor(list(text.read_bytes()[:48])).view(3, 16)  # 3 consecutive windows of the block size
    from outlier_lab.metrics.tokens import vocabulary_classes
    from outlier_lab.probe.ours import measure_model

    _, want = measure_model(model.eval(), ids, vocabulary_classes(lambda i: bytes([i]).decode("latin-1"), 256))
    assert values["outliers/act/avg_kurtosis"] == pytest.approx(want["outliers/act/avg_kurtosis"], rel=1e-6)
    shares = [values[f"outliers/act/top_channel_{name}_share"] for name in ("initial", "strong", "weak", "other")]
    assert sum(shares) == pytest.approx(1.0)  # every position got a class from the byte tokenizer


def test_data_names_the_windows_of_a_checkpoint_without_a_data_config(tmp_path):
    """data=NAME gives a checkpoint that carries no data config (or the wrong one) a task's own
    probe windows, with the task's query domains, as evaluate.py's data=NAME does."""
    model, path = nanogpt_checkpoint(tmp_path)
    values = analyze.analyze(compose_analyze(tmp_path / "out", f"ckpt={path}", "nanogpt.attention=ca_bias",
                                             "data=bigram_backcopy", "data.source_bytes=200000", "windows=4"))
    from outlier_lab.data.bigram_backcopy import BigramBackcopyDataModule
    from outlier_lab.probe.ours import data_domains, measure_model

    task = BigramBackcopyDataModule(vocab=64, triggers=3, source=None, source_bytes=200000, block_size=16,
                                    batch_size=32, val_batches=8, seed=0, bos=True)
    task.setup("validate")
    ids = task.probe_batch(4)
    _, want = measure_model(model.eval(), ids, **data_domains(task, ids))
    for key in ("outliers/domain/dormant/first_token_share", "outliers/domain/active/sink_rate",
                "outliers/domain/dormant/excess_loss", "outliers/act/avg_kurtosis"):
        assert values[key] == pytest.approx(want[key], rel=1e-6), key


@pytest.mark.parametrize("case, message", [
    ("missing", "checkpoint not found"),
    ("foreign", "corrupt or not a safe checkpoint"),
    ("short", "fewer than one window"),
    ("vocab", "vocabulary mismatch"),
    ("notext", "give text=FILE or data=NAME"),
])
def test_bad_input_is_one_clear_line(tmp_path, case, message):
    _, path = nanogpt_checkpoint(tmp_path, vocab_size=64 if case == "vocab" else 256)
    text = tmp_path / "text.txt"
    text.write_text("short" if case == "short" else "long enough text " * 20)
    args = {"missing": [f"ckpt={tmp_path / 'none.ckpt'}", f"text={text}"],
            "foreign": [f"ckpt={ROOT / 'README.md'}", f"text={text}"],
            "short": [f"ckpt={path}", f"text={text}"],
            "vocab": [f"ckpt={path}", f"text={text}"],
            "notext": [f"ckpt={path}"]}[case]
    result = subprocess.run([sys.executable, "analyze.py", *args, "nanogpt.attention=ca_bias",
                             f"hydra.run.dir={tmp_path / 'out'}"], cwd=ROOT, capture_output=True, text=True,
                            timeout=120, env=dict(os.environ))
    out = " ".join((result.stdout + result.stderr).split())
    assert result.returncode == 2 and message in out and "Traceback" not in out, out


def test_analyze_numbers_match_the_definitions_computed_by_hand(tmp_path):
    """analyze.py's attention and activation numbers against plain torch written from the
    definitions (docs/metrics.md), not from measure_model: p from q, k of each block's own
    norm output, h from each block's output. The case is chosen so that the plausible wrong
    definitions give other numbers (asserted below): the first-token share with query 0 in
    it, a sink rate thresholded after averaging over sequences, and top1/median taken over
    the whole batch instead of per sequence."""
    torch.manual_seed(1)
    C, H, T, W = 32, 2, 16, 6
    model = GPT(vocab_size=256, block_size=T, n_layer=2, n_head=H, n_embd=C, attention={"name": "softmax"}).eval()
    with torch.no_grad():  # peaked attention, so that the share to token 0 differs by sequence and head
        for block in model.transformer.h:
            block.attn.c_attn.weight[: 2 * C] *= 20
    path = tmp_path / "ckpt.pt"
    torch.save({"model": model.state_dict(), "model_args": {"n_head": H}}, path)
    text = tmp_path / "text.txt"
    text.write_bytes(bytes(torch.randint(32, 127, (W * T,), generator=torch.Generator().manual_seed(0)).tolist()))
    values = analyze.analyze(compose_analyze(tmp_path / "out", f"ckpt={path}", f"text={text}",
                                             "nanogpt.attention=softmax", f"windows={W}"))

    ids = torch.tensor(list(text.read_bytes())).view(W, T)
    normed, outputs = [], []
    hooks = [h for block in model.transformer.h for h in (
        block.ln_1.register_forward_hook(lambda m, a, out: normed.append(out)),
        block.register_forward_hook(lambda m, a, out: outputs.append(out)))]
    with torch.no_grad():
        model(ids)
    for hook in hooks:
        hook.remove()
    probs = []  # per layer (W, H, T, T): softmax(q k^T / sqrt(d)) over the keys j <= i
    for block, x in zip(model.transformer.h, normed):
        weight, bias = block.attn.c_attn.weight.detach(), block.attn.c_attn.bias.detach()
        q, k = (x @ weight[i * C:(i + 1) * C].T + bias[i * C:(i + 1) * C] for i in range(2))
        q, k = (t.view(W, T, H, C // H).transpose(1, 2) for t in (q, k))
        s = (q @ k.transpose(-1, -2) / math.sqrt(C // H)).masked_fill(~torch.ones(T, T).tril().bool(), -math.inf)
        probs.append(s.softmax(-1))
    first = torch.stack([p[..., 1:, 0].mean(dim=(0, 2)) for p in probs])  # (layer, head): queries i >= 1
    alpha = torch.stack([p[..., :, 0].mean(-1) for p in probs])  # (layer, W, H): query 0 included
    for layer in range(2):
        assert values[f"outliers/attn/first_token_share/layer_{layer}"] == pytest.approx(float(first[layer].mean()),
                                                                                        rel=1e-5)
    assert values["outliers/attn/first_token_share/max"] == pytest.approx(float(first.max()), rel=1e-5)
    assert values["outliers/attn/sink_rate"] == pytest.approx(float((alpha > 0.3).float().mean()), abs=1e-9)
    for layer, h in enumerate(outputs):
        rows = h.abs().reshape(W, -1)
        top1, median = rows.max(1).values.mean(), rows.quantile(0.5, dim=1).mean()  # per sequence, then averaged
        assert values[f"outliers/act/top1/layer_{layer}"] == pytest.approx(float(top1), rel=1e-5)
        assert values[f"outliers/act/median/layer_{layer}"] == pytest.approx(float(median), rel=1e-5)
        assert values[f"outliers/act/top1_over_median/layer_{layer}"] == pytest.approx(float(top1 / median), rel=1e-5)
        batch_wide = rows.max() / rows.flatten().quantile(0.5)
        assert abs(float(batch_wide) / float(top1 / median) - 1) > 0.01  # the batch-wide ratio would be caught

    # the case tells the right definitions from the plausible wrong ones
    with_query_0 = torch.stack([p[..., :, 0].mean(dim=(0, 2)) for p in probs])
    assert abs(float(with_query_0.max()) - float(first.max())) > 0.01
    after_averaging = (alpha.mean(1) > 0.3).float().mean()  # thresholded once per (layer, head)
    assert abs(float(after_averaging) - values["outliers/attn/sink_rate"]) > 0.05
    assert 0 < values["outliers/attn/sink_rate"] < 1
