"""The cells of a study page's Markdown tables (docs/*/..._study.py): each group's report cell
per column, tested against a baseline group and Holm-corrected over the table, shown with its
marks, and the sentence that names the table's Holm family."""

from __future__ import annotations

from outlier_lab.report.compare import compare, correct
from outlier_lab.report.render import format_cell
from outlier_lab.report.table import Cell, Column, Group, make_cell

STAR = "\\*"  # a significance star, escaped for Markdown


def cells_against(groups: list[Group], cols: list[Column], base_of) -> dict[tuple[str, str], Cell]:
    """Each group's cell per column, compared with base_of(group)'s (None: not compared);
    Holm over every comparison with a p-value of these cells: the table's family."""
    cells = {(g.label, c.key): make_cell(g, c) for g in groups for c in cols}
    for column in cols:
        for group in groups:
            base = base_of(group)
            if base is not None and base is not group:
                cells[group.label, column.key].comparison = compare(column, cells[group.label, column.key],
                                                                    cells[base.label, column.key])
    correct([cell.comparison for cell in cells.values() if cell.comparison is not None])
    return cells


def shown(cell: Cell) -> str:
    text = format_cell(cell).replace("|", "\\|")
    c = cell.comparison
    return text + (f" {STAR * len(c.mark)}{c.letter}" if c is not None and c.mark else "")


def family(cells: dict, what: str) -> str:
    tested = [c.comparison for c in cells.values() if c.comparison is not None and c.comparison.tested]
    untested = sum(c.comparison is not None and not c.comparison.tested for c in cells.values())
    tests = sorted({c.test for c in tested})
    names = {"fisher": "Fisher's exact test (ᶠ)", "welch": "Welch's t-test (ᵗ)"}
    return (f"Holm's family: the {len(tested)} comparisons with a p-value in this table ({what}; "
            f"{' and '.join(names[t] for t in tests)}); \\* / \\*\\*: Holm-corrected p < 0.05 / 0.01"
            + (f"; {untested} comparison(s) without a test (neither group varies)." if untested else "."))
