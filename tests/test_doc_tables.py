"""The docs' result tables are generated (docs/doc_tables.py): each one is regenerated here from
the committed per-run CSVs by its script and must equal the page's text; every other table of
the study pages is marked as not a result; the mechanism figure plots the committed curves."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
STUDY_PAGES = ["mechanism.md", "peak.md", "study.md", "sweeps.md"]
NOT_GENERATED = re.compile(r"<!-- not generated: \S.* -->")  # a table that is no result (a recipe, options)


def load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


doc_tables = load(DOCS / "doc_tables.py", "doc_tables")


@pytest.mark.parametrize("page", STUDY_PAGES)
def test_every_generated_table_equals_its_script(page):
    path = DOCS / page
    assert doc_tables.BLOCK.search(path.read_text(encoding="utf-8")), f"{page} has no generated table"
    assert doc_tables.differing(path) == [], f"run: python docs/doc_tables.py (then review the diff of {page})"


@pytest.mark.parametrize("page", STUDY_PAGES)
def test_no_result_table_is_typed_by_hand(page):
    """Outside the generated blocks, a table is allowed only under a `not generated` comment."""
    text = doc_tables.BLOCK.sub("", (DOCS / page).read_text(encoding="utf-8"))
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("|") and (i == 0 or not lines[i - 1].startswith("|"))]
    for i in starts:
        before = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        assert NOT_GENERATED.fullmatch(before.strip()), f"{page}: a hand-typed table at line {i + 1}: {lines[i][:80]}"


def test_a_changed_table_is_found_and_rewritten(tmp_path, monkeypatch):
    page = tmp_path / "page.md"
    monkeypatch.setattr(doc_tables, "table", lambda script, name: f"| {script} | {name} |\n|---|---|")
    block = "<!-- generated: x.py t -->\n| x.py | t |\n|---|---|\n<!-- /generated -->\n"
    page.write_text("intro\n\n" + block.replace("| t |", "| typed |") + "\nend\n")
    assert doc_tables.differing(page) == ["x.py t"]
    fixed = doc_tables.regenerated(page.read_text())
    assert fixed == "intro\n\n" + block + "\nend\n"
    page.write_text(fixed)
    assert doc_tables.differing(page) == []


def test_a_block_naming_an_unknown_table_is_an_error():
    with pytest.raises(KeyError, match="has no table 'nope'"):
        doc_tables.table("mechanism/mechanism_study.py", "nope")
    with pytest.raises(FileNotFoundError, match="not a script under docs/"):
        doc_tables.table("mechanism/missing.py", "main")


def test_the_per_seed_figure_plots_each_seeds_committed_curve(tmp_path):
    study = load(DOCS / "mechanism" / "mechanism_study.py", "mechanism_study")
    fig = study.per_seed_figure(tmp_path / "figure.png")
    curves = pd.read_csv(study.RUNS / "curves.csv")
    for row, text in enumerate(study.TEXTS):
        for col, variant in enumerate(study.BISTABLE):
            ax = fig.axes[row * len(study.BISTABLE) + col]
            assert ax.get_title() == f"{variant}, {text}"
            runs = curves[(curves.sweep == study.TEXT_SWEEP[text]) & (curves.variant == variant)]
            lines = {line.get_label(): line.get_ydata() for line in ax.get_lines()}
            assert len(lines) == runs.seed.nunique() >= 10
            for seed, run in runs.groupby("seed"):
                np.testing.assert_allclose(lines[f"seed {seed}"], run[study.CURVES[0]].to_numpy())
