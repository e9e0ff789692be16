"""The house's layers: the parts import the leaf embed_common, never the supervisor on top, and the leaf
imports nothing of ours. Read from the source (ast), so a lazy import inside a function counts too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OURS = {"broker", "worker", "http_front", "supervisor", "embed_client", "embed_common", "bench", "tests"}
PARTS = ("broker", "worker", "http_front", "embed_client")


def imported_packages(path: Path) -> set[str]:
    """The top-level packages of ours that a module imports, anywhere in it."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found.update(top for name in names if (top := name.split(".", 1)[0]) in OURS)
    return found


def modules(package: str) -> list[Path]:
    found = sorted((ROOT / package).rglob("*.py"))
    assert found, f"no modules in {package}/"
    return found


@pytest.mark.parametrize("package", PARTS)
def test_no_part_reaches_the_supervisor(package: str) -> None:
    offenders = {str(p.relative_to(ROOT)): imported_packages(p) for p in modules(package)}
    offenders = {path: pkgs for path, pkgs in offenders.items() if "supervisor" in pkgs}
    assert offenders == {}


def test_embed_common_is_a_leaf() -> None:
    offenders = {str(p.relative_to(ROOT)): imported_packages(p) - {"embed_common"} for p in modules("embed_common")}
    assert {path: pkgs for path, pkgs in offenders.items() if pkgs} == {}


def test_the_check_sees_a_lazy_import(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("import os\n\ndef f():\n    from supervisor import progress\n    import broker.broker\n")
    assert imported_packages(module) == {"supervisor", "broker"}
