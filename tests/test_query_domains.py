"""Query domains: a data module names boolean masks over its probe positions, and the monitor,
analyze.py and the report show the attention statistics and the loss per domain, through
per-domain metric templates (``{domain}`` in a declared key)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from outlier_lab.models.gpt import GPT
from outlier_lab import report
from outlier_lab.metrics import registry
from outlier_lab.metrics.attention import attention_entropy, first_token_share, null_mass, sink_rate, sink_scores
from outlier_lab.metrics.registry import Metric
from outlier_lab.probe.ours import measure_model, probe


def random_probs(B=3, H=2, T=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, H, T, T, generator=g) * 2
    logits = logits.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), -math.inf)
    return logits.softmax(-1)


def test_masked_attention_statistics_against_plain_loops():
    p = random_probs()
    B, H, T, _ = p.shape
    queries = torch.zeros(B, T, dtype=torch.bool)
    queries[0, [1, 3]] = True
    queries[1, [0, 2, 5]] = True  # sequence 2 has no query of the domain
    rows = [(b, i) for b in range(B) for i in range(T) if queries[b, i]]
    for h in range(H):
        share = [p[b, h, i, 0].item() for b, i in rows if i >= 1]  # query 0 never counts
        assert first_token_share(p, queries)[h].item() == pytest.approx(sum(share) / len(share))
        ent = [-(p[b, h, i] * p[b, h, i].clamp(min=1e-30).log()).sum().item() for b, i in rows]
        assert attention_entropy(p, queries)[h].item() == pytest.approx(sum(ent) / len(ent), rel=1e-5)
        null = torch.rand(B, H, T, generator=torch.Generator().manual_seed(1))
        assert null_mass(null, queries)[h].item() == pytest.approx(sum(null[b, h, i].item() for b, i in rows) / len(rows))
    # the unmasked statistic is a different number here: the mask matters
    assert not torch.allclose(first_token_share(p, queries), first_token_share(p))
    # Gu et al.'s alpha over the domain's queries among the first 4; NaN where there are none
    scores = sink_scores(p, tokens=4, queries=queries)
    assert scores[0, 1].item() == pytest.approx((p[0, 1, 1, 0] + p[0, 1, 3, 0]).item() / 2)
    assert scores[1, 0].item() == pytest.approx((p[1, 0, 0, 0] + p[1, 0, 2, 0]).item() / 2)  # 5 is beyond 4
    assert torch.isnan(scores[2]).all()
    valid = scores[:2].flatten()
    assert sink_rate(scores, 0.3) == pytest.approx((valid > 0.3).float().mean().item())


def test_a_template_expands_to_the_domains_found():
    metric = Metric("outliers/domain/{domain}/x", "x on {domain} queries", column="x ({domain})", curve=True)
    keys = ["outliers/domain/dormant/x", "outliers/domain/active/x", "outliers/domain/active/x/layer_0",
            "outliers/attn/x"]
    found = metric.instances(keys)
    assert [m.key for m in found] == ["outliers/domain/active/x", "outliers/domain/dormant/x"]
    assert [m.column for m in found] == ["x (active)", "x (dormant)"]
    assert found[1].title == "x on dormant queries"
    assert metric.matches("outliers/domain/a/x") and not metric.matches("outliers/domain/a/b/x")
    curves = registry.curve_keys(["outliers/domain/dormant/first_token_share"])
    assert "outliers/domain/dormant/first_token_share" in curves and "outliers/attn/sink_rate" in curves
    assert not any("{domain}" in key for key in registry.curve_keys())
    with pytest.raises(ValueError, match="per-domain"):
        Metric("outliers/domain/{domain}/y", "y", curve=True, emergence=1.0)


def tiny_gpt(attention="softmax"):
    torch.manual_seed(0)
    return GPT(vocab_size=11, block_size=12, n_layer=2, n_head=2, n_embd=16, attention={"name": attention})


def test_the_domain_measures_equal_a_direct_computation():
    model = tiny_gpt()
    idx = torch.randint(0, 11, (3, 12), generator=torch.Generator().manual_seed(2))
    active = idx % 3 == 0
    active[:, 0] = False
    dormant = ~active
    dormant[:, 0] = False
    optimum = torch.rand(3, 12, generator=torch.Generator().manual_seed(3))
    _, metrics = measure_model(model, idx, domains={"active": active, "dormant": dormant}, optimum=optimum)
    result = probe(model, idx)
    logits = model.eval()(idx)
    token_loss = F.cross_entropy(logits[:, :-1].transpose(1, 2), idx[:, 1:], reduction="none")
    for name, mask in (("active", active), ("dormant", dormant)):
        rows = mask[:, :-1]  # the last position has no target
        assert metrics[f"outliers/domain/{name}/loss"] == pytest.approx(token_loss[rows].mean().item(), rel=1e-5)
        assert metrics[f"outliers/domain/{name}/excess_loss"] == pytest.approx(
            (token_loss[rows] - optimum[:, :-1][rows]).mean().item(), rel=1e-5)
        shares = []
        for layer in range(2):
            p = result.attention[layer]["probs"]
            per_head = [p[:, h, 1:, 0][mask[:, 1:]].mean().item() for h in range(2)]
            shares += per_head
            assert metrics[f"outliers/domain/{name}/first_token_share/layer_{layer}"] == pytest.approx(
                sum(per_head) / 2, rel=1e-5)
        assert metrics[f"outliers/domain/{name}/first_token_share"] == pytest.approx(max(shares), rel=1e-5)
        assert metrics[f"outliers/domain/{name}/null_mass"] == 0.0  # softmax rows sum to one
    # no domains named: no domain keys, and the probe carries the per-position loss all the same
    _, plain = measure_model(model, idx)
    assert not any(key.startswith("outliers/domain/") for key in plain)
    assert torch.allclose(probe(model, idx).token_loss[:, :-1], token_loss, atol=1e-6)


def test_the_report_shows_a_column_and_a_panel_per_domain(tmp_path: Path):
    runs = [report.Run(path=Path(f"run{i}"), name=f"run{i}", variant=v, seed=i,
                       summary={"convergence/final_val_loss": 1.0,
                                "outliers/domain/dormant/first_token_share": share,
                                "outliers/domain/active/first_token_share": 0.01})
            for i, (v, share) in enumerate([("softmax", 0.99), ("softmax", 0.98), ("explicit_scale", 0.3),
                                            ("explicit_scale", 0.4)])]
    table = report.build_table(report.group_runs(runs, "softmax"), "softmax")
    headers = [c.header for c in table.columns]
    assert "first-token share (active)" in headers and "first-token share (dormant)" in headers
    cell = table.cells["explicit_scale", "outliers/domain/dormant/first_token_share"]
    assert cell.mean == pytest.approx(0.35) and cell.p is not None and cell.p < 0.05
    # the panel is read from metrics.csv and drawn with its domain in the title
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text("attention: {name: softmax}\nseed: 0\n")
    (run_dir / "metrics.csv").write_text("step,train/loss,outliers/domain/dormant/first_token_share\n"
                                         "0,5,0.1\n9,4,0.9\n")
    run = report.read_run(run_dir)
    assert run.curves["outliers/domain/dormant/first_token_share"][1].tolist() == [0.1, 0.9]
    fig = report.make_figures(report.group_runs([run], "softmax"))["outliers_vs_step"]
    titles = [ax.get_title() for ax in fig.axes]
    assert "first-token share, dormant queries (max)" in titles


def test_the_report_can_draw_only_some_panels(tmp_path: Path):
    run_dir = tmp_path / "sweep" / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text("attention: {name: softmax}\nseed: 0\n")
    (run_dir / "metrics.csv").write_text("step,train/loss,outliers/domain/dormant/first_token_share,"
                                         "outliers/attn/sink_rate\n0,5,0.1,0.0\n9,4,0.9,0.5\n")
    (run_dir / "summary.json").write_text('{"convergence/final_val_loss": 1.0}')
    out = tmp_path / "report"
    assert report.main([str(tmp_path / "sweep"), "--out", str(out), "--panels", "outliers/domain/*"]) == 0
    fig = report.make_figures(report.group_runs(report.load_runs([tmp_path / "sweep"]), "softmax"),
                              ["outliers/domain/*"])["outliers_vs_step"]
    assert [ax.get_title() for ax in fig.axes if ax.get_title()] == ["first-token share, dormant queries (max)"]
    assert (out / "outliers_vs_step.png").is_file()


@pytest.mark.parametrize("attention, extra", [("explicit_scale", "scale"), ("gated", "gate"), ("attn_bias", "slot_weight")])
def test_a_variant_s_own_per_query_values_are_averaged_per_domain(attention, extra):
    """explicit_scale's S(x) is (B, T, H), attn_bias's slot weight (B, H, T): both layouts."""
    model = tiny_gpt(attention)
    idx = torch.randint(0, 11, (3, 12), generator=torch.Generator().manual_seed(4))
    queries = idx % 2 == 0
    _, metrics = measure_model(model, idx, domains={"even": queries})
    value = probe(model, idx).attention[0][extra].float()
    per_query = value.transpose(1, 2) if value.shape[1] == 2 and value.shape[2] == 12 else value  # -> (B, T, ...)
    expected = per_query.reshape(3, 12, -1).mean(-1)[queries].mean().item()
    assert metrics[f"outliers/domain/even/{extra}/layer_0"] == pytest.approx(expected, rel=1e-5)
    # and it is not the unmasked mean
    assert metrics[f"outliers/domain/even/{extra}/layer_0"] != pytest.approx(per_query.mean().item(), rel=1e-4)


def test_an_extra_of_an_unknown_layout_is_an_error_not_a_missing_metric(monkeypatch):
    """Before, an extra of any other shape was dropped, and its domain metric vanished."""
    model = tiny_gpt("explicit_scale")
    idx = torch.randint(0, 11, (3, 12), generator=torch.Generator().manual_seed(4))
    attend = type(model.transformer.h[0].attn).attend

    def attend_with_a_per_sequence_extra(self, q, k, v, x, probe):
        o, extras = attend(self, q, k, v, x, probe)
        if probe:
            extras["scale"] = extras["scale"].mean(dim=(1, 2))  # (B,): one number per sequence
        return o, extras

    monkeypatch.setattr(type(model.transformer.h[0].attn), "attend", attend_with_a_per_sequence_extra)
    with pytest.raises(RuntimeError, match=r"probe extra of shape \(3,\) is neither per query"):
        measure_model(model, idx, domains={"even": idx % 2 == 0})


def test_differential_s_lambda_is_a_layer_constant_without_a_domain_value():
    model = tiny_gpt("differential")
    idx = torch.randint(0, 11, (3, 12), generator=torch.Generator().manual_seed(4))
    _, metrics = measure_model(model, idx, domains={"even": idx % 2 == 0})
    assert "outliers/domain/even/first_token_share/layer_0" in metrics
    assert not any("lambda" in key for key in metrics if key.startswith("outliers/domain/"))


def test_the_data_module_interface_is_checked():
    """A required member missing, or an optional one misspelt (found with hasattr, it would be
    silently never called), is a one-line ConfigError; the real data modules pass."""
    from outlier_lab.data.bigram_backcopy import BigramBackcopyDataModule
    from outlier_lab.data.datamodule import TextDataModule
    from outlier_lab.data.interface import check_data_module, query_domains
    from outlier_lab.errors import ConfigError

    class Complete:
        vocab_size = 4
        decode_token = probe_batch = calibration_batches = validation_batches = lambda self, *args: None
        train_dataloader = val_dataloader = lambda self: None

    class Misspelt(Complete):
        def probe_domain(self, tokens):
            return {"all": torch.ones_like(tokens, dtype=torch.bool)}

    class Partial:
        vocab_size = 4

        def decode_token(self, token):
            return str(token)

    for cls in (BigramBackcopyDataModule, TextDataModule, Complete):
        check_data_module(cls.__new__(cls))
    with pytest.raises(ConfigError, match="has probe_domain, not probe_domains"):
        check_data_module(Misspelt())
    with pytest.raises(ConfigError, match="data module Partial lacks calibration_batches, probe_batch"):
        check_data_module(Partial())

    class BadMasks:
        def probe_domains(self, tokens):
            return {"ok": tokens > 0, "wrong": (tokens > 0).float()}

    with pytest.raises(ConfigError, match="wrong is not one"):
        query_domains(BadMasks(), torch.zeros(2, 3, dtype=torch.long))
