"""The prepared GPU check, the compile benchmark and the analyze memory benchmark run end to
end (on CPU, at tiny sizes)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_cpu_smoke_runs_every_stage(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OUTLIER_LAB_CACHE": str(tmp_path / "cache")}
    result = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--cpu-smoke"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    out = result.stdout
    assert result.returncode == 0, out[-3000:] + result.stderr[-3000:]
    assert out.rstrip().splitlines()[-1] == "gpu_check_failed_stages=0"
    for stage in ("tests", "kernels", "training", "compile", "headline"):
        assert f"== {stage}" in out
    assert out.count(" ok\n") == len(list((ROOT / "configs" / "attention").glob("*.yaml")))  # every variant trained
    assert "explicit_scale_over_softmax_top1_median=" in out and "worst_fused_over_softmax" in out


@pytest.mark.slow
def test_the_analyze_memory_benchmark_runs_on_a_tiny_model(tmp_path):
    """A transformers import from benchmarks/ once found benchmarks/kernels.py in place of Hugging
    Face's ``kernels``: the benchmark builds its model shard by shard and runs analyze.py."""
    result = subprocess.run([sys.executable, "benchmarks/analyze_memory.py", "--tiny", "--stages", "7b_intervene",
                             "--keep", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "7b_intervene: 2 windows of 256: peak RSS" in result.stdout
    index = (tmp_path / "llama_tiny" / "model.safetensors.index.json").read_text()
    assert '"lm_head.weight"' in index and '"model.norm.weight"' in index  # every tensor went to a shard


def test_gpu_check_refuses_a_machine_without_cuda():
    pytest.importorskip("torch").cuda.is_available() and pytest.skip("this machine has CUDA")
    result = subprocess.run([sys.executable, "benchmarks/gpu_check.py"], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode != 0
    assert result.stderr.strip() == "gpu_check: no CUDA device here; run it on the GPU machine, or use --cpu-smoke"


def test_the_compile_headline_leaves_out_a_run_that_fell_back_to_eager(monkeypatch, capsys):
    """A fallback times eager twice; its ratio (here 0.5, worse than the real one) must not be
    the headline, and it is named."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("compile_benchmark", ROOT / "benchmarks" / "compile.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    results = {"softmax": dict(eager=1.0, compiled=1.25, warmup=3.0, fell_back=False),
               "softpick": dict(eager=1.0, compiled=2.0, warmup=0.1, fell_back=True)}
    monkeypatch.setattr(bench, "measure", lambda size, variant, *args, **kwargs: results[variant])
    assert bench.table(["nano"], ["softmax", "softpick"], "cpu", 1) == pytest.approx(0.8)
    assert "left out of the headline: nano/softpick" in capsys.readouterr().out
    monkeypatch.setattr(bench, "measure", lambda *args, **kwargs: results["softpick"])
    assert math.isnan(bench.table(["nano"], ["softpick"], "cpu", 1))  # nothing compiled: no headline number


def test_the_monitor_benchmark_keeps_the_default_runs_probes_per_step():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import monitor_overhead
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    # the default: 2,500 steps, a probe every 150: at 0, 150, ..., 2,400 and at the end, 2,500
    assert monitor_overhead.probes(2500, 150) == 18
    assert monitor_overhead.probes(300, 150) == 3  # the end falls on a multiple: probed once
    every = monitor_overhead.matched_cadence(416, 2500, 150)
    assert every == 208 and monitor_overhead.probes(416, every) == 3
    assert abs(3 / 416 - 18 / 2500) < 1e-4
    # a cadence per step, not the default's 150: 200 steps at 150 would probe 3 times (1.5x the rate)
    assert monitor_overhead.probes(200, monitor_overhead.matched_cadence(200, 2500, 150)) / 200 < 3 / 200
