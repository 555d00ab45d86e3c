"""docs/models.md carries the generated parameter/FLOP table; it must match the code."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lungseg.models import list_models
from lungseg.models.summary import markdown_table

REPO = Path(__file__).resolve().parents[2]


def _rows(table: str) -> dict[str, list[str]]:
    rows = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] in list_models():
            rows[cells[0]] = cells
    return rows


@pytest.mark.slow
def test_docs_table_matches_the_code():
    doc = (REPO / "docs" / "models.md").read_text(encoding="utf-8")
    m = re.search(r"<!-- table:start -->\n(.*?)<!-- table:end -->", doc, re.S)
    assert m, "docs/models.md lost its table markers"
    documented = _rows(m.group(1))
    current = _rows(markdown_table(sizes=(256, 512), base_channels=64))  # meta device: ~5 s
    assert set(documented) == set(list_models())
    for name, cells in current.items():
        assert documented[name] == cells, f"{name}: docs say {documented[name]}, code gives {cells}"
