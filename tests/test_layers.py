"""The parts of outlier_lab import top-down only: the entry points (train.py, evaluate.py,
analyze.py, benchmarks/) above everything, then the report, the monitor and the Hugging Face
tooling, compression, the probe, the metrics, the data, the models, the kernels, and
errors.py at the bottom. An import that points back up (or sideways, between two parts of
one layer) makes a lower part depend on what is built on it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "outlier_lab"
# each top-level module or package of outlier_lab: higher = nearer the entry points
LAYER = {"errors": 0, "figure_style": 0, "summary": 0, "kernels": 1, "sweep": 1, "trainer": 1, "models": 2, "data": 3,
         "metrics": 4, "probe": 5, "compression": 6, "monitor": 7, "pretrained": 7, "report": 8}
SIZE_LIMIT = 300  # lines per module


def unit_of(path: Path) -> str:
    """The top-level module or package of outlier_lab that ``path`` belongs to."""
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def imported_units(path: Path) -> set[str]:
    """The top-level parts of outlier_lab that ``path`` imports."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[1] for alias in node.names
                      if alias.name.startswith("outlier_lab.")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            parts = node.module.split(".")
            if parts[0] == "outlier_lab":
                names |= {parts[1]} if len(parts) > 1 else {alias.name for alias in node.names}
    return names


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE)


def test_every_part_has_a_layer():
    parts = {unit_of(p) for p in MODULES}
    assert parts == set(LAYER), f"give these a layer: {sorted(parts - set(LAYER))}; gone: {sorted(set(LAYER) - parts)}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_down(path):
    unit = unit_of(path)
    upward = sorted(name for name in imported_units(path) if name != unit and LAYER[name] >= LAYER[unit])
    assert not upward, f"{path.relative_to(ROOT)} ({unit}) imports {upward}, which are not below it"


@pytest.mark.parametrize("path", MODULES + sorted(ROOT.glob("*.py")) + sorted((ROOT / "benchmarks").glob("*.py")),
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_modules_stay_short(path):
    lines = len(path.read_text().splitlines())
    assert lines <= SIZE_LIMIT, f"{path.relative_to(ROOT)} has {lines} lines (limit {SIZE_LIMIT}): split it by concern"
