"""The fault table in docs/operations.md stays true: every test a row names exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_test_the_fault_table_names_exists() -> None:
    text = (ROOT / "docs" / "operations.md").read_text()
    table = text.split("## Faults and what consul-sync does", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`(test_[a-z0-9_]+)", table))
    assert len(named) > 20  # the table is there, and read
    defined = set()
    for path in (ROOT / "tests").rglob("test_*.py"):
        defined |= set(re.findall(r"^(?:async )?def (test_[a-z0-9_]+)", path.read_text(), re.M))
    assert sorted(named - defined) == []
