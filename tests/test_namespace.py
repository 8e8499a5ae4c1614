"""The project's import names belong to it alone.

Python puts the directory of the running script (or the working directory, for ``python -c``
and pytest) first on ``sys.path``, so a top-level package of ours named like another
distribution's package shadows it for every library that imports it. transformers 5 imports
Hugging Face's ``kernels`` at start-up; a project package called ``kernels`` broke every
Hugging Face path. These tests run Python as a user does, from the project root, and as an
installed package from elsewhere."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NAMESPACE = "outlier_lab"
# generic names that other distributions own or may own (transformers imports ``kernels``)
FOREIGN = ("kernels", "models", "data", "errors", "outliers", "metrics", "report", "compression")


def installed_top_level() -> list[str]:
    """The top-level import names pyproject.toml installs (packages and single modules)."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = [p.rstrip("*").rstrip(".") for p in setuptools["packages"]["find"]["include"]]
    return sorted({p.split(".")[0] for p in packages} | set(setuptools.get("py-modules", [])))


def run_python(code: str, cwd: Path, timeout: int = 240) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**env, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"})


def test_the_project_installs_one_import_name():
    assert installed_top_level() == [NAMESPACE]


@pytest.mark.parametrize("where", ["project root", "elsewhere"])
def test_generic_import_names_are_not_the_projects(where, tmp_path):
    """From the root (the script directory of train.py / analyze.py) and from another directory
    (the editable install's finder), none of the generic names resolves into the project."""
    cwd = ROOT if where == "project root" else tmp_path
    code = ("import importlib.util, json\n"
            f"names = {list(FOREIGN) + [NAMESPACE]!r}\n"
            "specs = {n: importlib.util.find_spec(n) for n in names}\n"
            "print(json.dumps({n: (s.origin or str(list(s.submodule_search_locations or []))) if s else None "
            "for n, s in specs.items()}))")
    result = run_python(code, cwd)
    assert result.returncode == 0, result.stderr
    origins = json.loads(result.stdout.strip().splitlines()[-1])
    # a virtual environment may live inside the project: only the project's own files count
    ours = [n for n in FOREIGN if origins[n] and str(ROOT) in origins[n] and "site-packages" not in origins[n]]
    assert not ours, f"{ours} resolve into the project from {where}: {origins}"
    assert origins[NAMESPACE] and str(ROOT / NAMESPACE) in origins[NAMESPACE], origins


def test_transformers_and_every_project_module_import_together_and_analyze_runs(tmp_path):
    """One process started from the project root, as `python analyze.py` is: transformers'
    LLaMA and GPT-2 built from tiny configs, every module of the project imported beside
    them, then analyze.py on the tiny LLaMA. On the layout with a top-level ``kernels``
    package this fails at the first transformers import."""
    pytest.importorskip("transformers")
    text = tmp_path / "text.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 40)
    model_dir, out = tmp_path / "llama", tmp_path / "out"
    code = f"""
import importlib, pkgutil, runpy, sys
import torch, transformers
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM
torch.manual_seed(0)
GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, n_positions=32, vocab_size=256,
                           bos_token_id=None, eos_token_id=None))
llama = LlamaForCausalLM(LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     num_key_value_heads=1, intermediate_size=64, vocab_size=256,
                                     max_position_embeddings=64))
llama.save_pretrained({str(model_dir)!r})
modules = []
for top in {installed_top_level()!r}:
    package = importlib.import_module(top)
    modules.append(top)
    for info in pkgutil.walk_packages(getattr(package, "__path__", []), top + "."):
        if info.name.endswith(".__main__") or (".triton." in info.name + "."
                                               and importlib.util.find_spec("triton") is None):
            continue  # a command, not a module; the fused kernels need triton
        importlib.import_module(info.name)
        modules.append(info.name)
print("imported", len(modules), "project modules")
sys.argv = ["analyze.py", "model=hf:{model_dir}", "text={text}", "tokenizer=byte", "hydra.run.dir={out}"]
runpy.run_path("analyze.py", run_name="__main__")
"""
    result = run_python(code, ROOT)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    imported = int(result.stdout.split("imported ")[1].split()[0])
    assert imported >= 60, result.stdout  # every package and module, not just the namespace
    assert (out / "analysis.json").is_file(), result.stdout[-2000:]
