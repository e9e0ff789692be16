"""The two test tiers: every integration module is marked slow as a whole (so ``-m "not slow"`` is the fast
tier), and no unit module is."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.unit.source_tree import parsed

TESTS = Path(__file__).resolve().parents[1]


def module_marks(path: Path) -> str:
    for node in parsed(path).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "pytestmark" for t in node.targets):
            return ast.unparse(node.value)
    return ""


@pytest.mark.parametrize("path", sorted((TESTS / "integration").glob("test_*.py")), ids=lambda p: p.name)
def test_every_integration_module_is_slow(path: Path) -> None:
    assert "pytest.mark.slow" in module_marks(path)


def test_no_unit_module_is_slow() -> None:
    assert [p.name for p in sorted((TESTS / "unit").glob("test_*.py")) if "slow" in module_marks(p)] == []


def test_test_modules_have_unique_basenames() -> None:
    """pytest imports test modules by basename (rootdir-relative, no packages): two of one name fail the
    whole collection."""
    names = [p.name for p in TESTS.rglob("test_*.py") if "node_modules" not in p.parts]
    assert sorted(n for n in set(names) if names.count(n) > 1) == []
