"""The generated tables of the docs. Each sits in its page between two comments,

    <!-- generated: SCRIPT NAME -->
    ...the table, as SCRIPT's tables()[NAME] returns it...
    <!-- /generated -->

SCRIPT being a path relative to docs/ (e.g. mechanism/mechanism_study.py) whose ``tables()``
returns {name: Markdown} from committed per-run CSVs. Nothing between the comments is typed by
hand: this rewrites it, and tests/test_doc_tables.py fails when a page and its scripts differ.

    python docs/doc_tables.py            # rewrite every generated block of docs/*.md
    python docs/doc_tables.py --check    # exit 1, naming each block that differs
"""

from __future__ import annotations

import importlib.util
import re
import sys
from functools import cache
from pathlib import Path

DOCS = Path(__file__).resolve().parent
BLOCK = re.compile(r"(<!-- generated: (\S+) (\S+) -->\n)(.*?)(<!-- /generated -->)", re.S)


@cache
def script_tables(script: str) -> dict[str, str]:
    """The tables of one script, computed once per process."""
    path = DOCS / script
    if not path.is_file():
        raise FileNotFoundError(f"a generated block names {script!r}, which is not a script under docs/")
    spec = importlib.util.spec_from_file_location(f"docs_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.tables()


def table(script: str, name: str) -> str:
    tables = script_tables(script)
    if name not in tables:
        raise KeyError(f"{script} has no table {name!r} (it has: {', '.join(tables)})")
    return tables[name]


def regenerated(text: str) -> str:
    """The page with every generated block replaced by its script's table."""
    return BLOCK.sub(lambda m: m.group(1) + table(m.group(2), m.group(3)).rstrip("\n") + "\n" + m.group(5), text)


def differing(page: Path) -> list[str]:
    """``SCRIPT NAME`` of each block of page whose text is not its script's table."""
    return [f"{m.group(2)} {m.group(3)}" for m in BLOCK.finditer(page.read_text(encoding="utf-8"))
            if m.group(4) != table(m.group(2), m.group(3)).rstrip("\n") + "\n"]


def pages() -> list[Path]:
    return sorted(p for p in DOCS.glob("*.md") if BLOCK.search(p.read_text(encoding="utf-8")))


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    for page in pages():
        if check:
            stale += [f"{page.name}: {block}" for block in differing(page)]
        else:
            old = page.read_text(encoding="utf-8")
            new = regenerated(old)
            if new != old:
                page.write_text(new, encoding="utf-8")
                print(f"rewrote {page.relative_to(DOCS.parent)}")
    for line in stale:
        print(f"differs from its script: {line}")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
