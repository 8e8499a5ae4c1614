"""The metric declarations (outlier_lab/metrics/registry.py): one declaration per value, read by
the monitor (history, summary, emergence) and the report; broken declarations fail loudly."""

from __future__ import annotations

import pytest
import torch

from outlier_lab import metrics
from outlier_lab.monitor import OutlierMonitor
from outlier_lab.metrics import registry
from outlier_lab.metrics.registry import Metric


@pytest.fixture
def scratch_registry(monkeypatch):
    """An empty registry for the test, the real one restored afterwards."""
    monkeypatch.setattr(registry, "_METRICS", {})
    monkeypatch.setattr(registry, "_MEASURES", [])


def test_the_monitor_history_and_emergence_come_from_the_declarations():
    curves = metrics.curve_keys()
    assert "outliers/attn/sink_rate" in curves and "outliers/act/avg_kurtosis" in curves
    assert metrics.emergence_defaults() == {"outliers/act/top1_over_median/max": 100.0,
                                            "outliers/attn/sink_rate": 0.5}
    monitor = OutlierMonitor(emergence={"outliers/attn/sink_rate": None, "outliers/act/avg_kurtosis": 50.0})
    assert monitor.emergence == {"outliers/act/top1_over_median/max": 100.0, "outliers/act/avg_kurtosis": 50.0}


def test_report_columns_are_ordered_by_section_then_declaration():
    import outlier_lab.compression  # noqa: F401  (declares the protocols' ppl ratios)

    keys = [m.key for m in metrics.declared() if m.column]
    sections = [key.split("/")[0] for key in keys]
    assert sections == sorted(sections, key=registry.SECTIONS.index)
    assert keys.index("outliers/attn/sink_rate") < keys.index("outliers/attn/first_token_share/max")


def test_a_key_declared_twice_differently_is_an_error(scratch_registry):
    registry.declare(Metric("outliers/x", "x", curve=True))
    registry.declare(Metric("outliers/x", "x", curve=True))  # the same again is fine
    with pytest.raises(RuntimeError, match="declared twice"):
        registry.declare(Metric("outliers/x", "another title", curve=True))


def test_bad_declarations_are_refused():
    with pytest.raises(ValueError, match="must start with"):
        Metric("misc/x", "x")
    with pytest.raises(ValueError, match="curve=True"):
        Metric("outliers/x", "x", panel=True)


def test_a_measure_that_does_not_produce_its_declared_key_fails(scratch_registry):
    @registry.measure(Metric("outliers/y", "y", curve=True))
    def forgetful(probe):
        return {"outliers/z": 1.0}

    with pytest.raises(RuntimeError, match="forgetful declares .*outliers/y"):
        registry.run_measures(None)


def test_unknown_key_lists_the_declared_ones():
    with pytest.raises(KeyError, match="outliers/attn/sink_rate"):
        registry.get("outliers/nonexistent")


def test_measures_produce_every_declared_probe_key():
    from outlier_lab.models.gpt import GPT
    from outlier_lab.monitor.probes import probe

    torch.manual_seed(0)
    model = GPT(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32)
    idx = torch.randint(0, 64, (2, 16))
    values = metrics.run_measures(metrics.Probe(probe(model, idx), model))
    assert set(metrics.curve_keys()) <= set(values)
