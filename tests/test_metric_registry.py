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
    monkeypatch.setattr(registry, "_LOADED", set(registry.SECTIONS.values()))  # nothing real loads into it


def test_the_monitor_history_and_emergence_come_from_the_declarations():
    curves = metrics.curve_keys()
    assert "outliers/attn/sink_rate" in curves and "outliers/act/avg_kurtosis" in curves
    assert metrics.emergence_defaults() == {"outliers/act/top1_over_median/max": 100.0,
                                            "outliers/attn/sink_rate": 0.5}
    monitor = OutlierMonitor(emergence={"outliers/attn/sink_rate": None, "outliers/act/avg_kurtosis": 50.0})
    assert monitor.emergence == {"outliers/act/top1_over_median/max": 100.0, "outliers/act/avg_kurtosis": 50.0}


def test_report_columns_are_ordered_by_section_then_declaration():
    keys = [m.key for m in metrics.declared() if m.column]
    sections = [key.split("/")[0] for key in keys]
    assert sections == sorted(sections, key=list(registry.SECTIONS).index)
    assert {"convergence/final_val_loss", "compress/w8a8/ppl_ratio"} <= set(keys)  # loaded by the registry itself
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
    @registry.measure(Metric("outliers/y", "y", curve=True), window=lambda probe: {})
    def forgetful(parts, thresholds):
        return {"outliers/z": 1.0}

    with pytest.raises(RuntimeError, match="forgetful declares .*outliers/y"):
        registry.run_measures(metrics.Probe(None, None))


def test_two_measures_of_one_name_are_refused(scratch_registry):
    """Their partials are kept by the measure's name: a second one would overwrite the first's."""
    registry.measure(window=lambda probe: {})(lambda parts, thresholds: {})
    with pytest.raises(RuntimeError, match="a measure named '<lambda>' is registered twice"):
        registry.measure(window=lambda probe: {})(lambda parts, thresholds: {})


def test_unknown_key_lists_the_declared_ones():
    with pytest.raises(KeyError, match="outliers/attn/sink_rate"):
        registry.get("outliers/nonexistent")


def test_measures_produce_every_declared_probe_key():
    from outlier_lab.models.gpt import GPT
    from outlier_lab.probe.ours import probe

    torch.manual_seed(0)
    model = GPT(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32)
    idx = torch.randint(0, 64, (2, 16))
    values = metrics.run_measures(metrics.Probe(probe(model, idx), model))
    assert set(metrics.curve_keys()) <= set(values)


def declared_in_a_fresh_process(first_import: str) -> list[str]:
    import json
    import subprocess
    import sys
    from pathlib import Path

    code = (f"import sys, json\nimport {first_import}\nfrom outlier_lab.metrics.registry import declared\n"
            "keys = [m.key for m in declared()]\n"
            "print(json.dumps({'keys': keys, 'lightning': any(m.split('.')[0] in ('lightning', 'pytorch_lightning') "
            "for m in sys.modules)}))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


def test_the_declarations_load_without_training_code_in_one_order_whatever_was_imported_first():
    """The report's columns follow the declarations' order, which must not depend on which
    module a process happened to import first, and reading them must not pull in Lightning."""
    via_report = declared_in_a_fresh_process("outlier_lab.report.cli")  # python -m outlier_lab.report
    via_compression = declared_in_a_fresh_process("outlier_lab.compression.protocols")
    assert via_report["keys"] == via_compression["keys"]
    assert not via_report["lightning"] and not via_compression["lightning"]
    keys = via_report["keys"]
    assert keys.index("convergence/final_val_loss") < keys.index("outliers/attn/sink_rate") < keys.index(
        "compress/w8a8/ppl_ratio")


def test_a_project_module_cannot_declare_outside_its_sections_package(scratch_registry):
    """A metric declared where the registry does not load from would never reach the report."""
    with pytest.raises(RuntimeError, match="declared in outlier_lab.monitor.extra, outside outlier_lab.metrics"):
        registry.declare(Metric("outliers/extra", "x", curve=True), source="outlier_lab.monitor.extra")
    with pytest.raises(RuntimeError, match="outside outlier_lab.compression"):
        registry.declare(Metric("compress/x/ppl_ratio", "x"), source="outlier_lab.metrics.measures")
    registry.declare(Metric("outliers/extra", "x", curve=True), source="outlier_lab.metrics.extra")  # inside: fine
