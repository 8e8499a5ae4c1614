"""The prepared GPU check and the compile benchmark run end to end (on CPU, at tiny sizes)."""

from __future__ import annotations

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


def test_gpu_check_refuses_a_machine_without_cuda():
    pytest.importorskip("torch").cuda.is_available() and pytest.skip("this machine has CUDA")
    result = subprocess.run([sys.executable, "benchmarks/gpu_check.py"], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode != 0
    assert result.stderr.strip() == "gpu_check: no CUDA device here; run it on the GPU machine, or use --cpu-smoke"
