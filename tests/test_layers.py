"""The packages import top-down only: entry points (train.py, evaluate.py, benchmarks/), then
outliers/ and data/, then models/, then kernels/, with errors.py at the bottom. An import
that points back up makes the lower layer depend on what is built on it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYER = {"errors": 0, "kernels": 1, "models": 2, "data": 3, "outliers": 3}  # higher = nearer the entry points
SIZE_LIMIT = 300  # lines per module


def imported_packages(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names & set(LAYER)


MODULES = sorted(p for package in LAYER for p in (ROOT / package).rglob("*.py")) + [ROOT / "errors.py"]


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_down(path):
    package = path.relative_to(ROOT).parts[0].removesuffix(".py")
    upward = sorted(name for name in imported_packages(path)
                    if name != package and LAYER[name] >= LAYER[package])
    assert not upward, f"{path.relative_to(ROOT)} ({package}) imports {upward}, which are not below it"


@pytest.mark.parametrize("path", MODULES + sorted(ROOT.glob("*.py")) + sorted((ROOT / "benchmarks").glob("*.py")),
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_modules_stay_short(path):
    lines = len(path.read_text().splitlines())
    assert lines <= SIZE_LIMIT, f"{path.relative_to(ROOT)} has {lines} lines (limit {SIZE_LIMIT}): split it by concern"
