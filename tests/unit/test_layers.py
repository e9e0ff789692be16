"""The house's layers: the parts import the leaf embed_common, never the supervisor on top, and the leaf
imports nothing of ours. Read from the source (ast), so a lazy import inside a function counts too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.unit.source_tree import walked

ROOT = Path(__file__).resolve().parents[2]
OURS = {"broker", "worker", "http_front", "supervisor", "embed_client", "embed_common", "bench", "tests"}
PARTS = ("broker", "worker", "http_front", "embed_client")


def imported_packages(path: Path) -> set[str]:
    """The top-level packages of ours that a module imports, anywhere in it."""
    found: set[str] = set()
    for node in walked(path):
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


# -- no import circle anywhere, and the app module imported by its entry point alone ------------------------


def module_name(root: Path, path: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path, packages: set[str]) -> dict[str, set[str]]:
    """Module -> the modules of ours it imports, anywhere in it (``from pkg import mod`` names the module)."""
    found = {module_name(root, p): p for package in packages for p in sorted((root / package).rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for name, path in found.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in walked(path):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    kept = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join([*kept, base] if base else kept)
                targets.update(f"{base}.{alias.name}" if f"{base}.{alias.name}" in found else base
                               for alias in node.names)
        for target in targets:
            while target and target not in found:  # pkg.mod.attr -> pkg.mod
                target = target.rpartition(".")[0]
            if target and target != name:
                graph.setdefault(name, set()).add(target)
        graph.setdefault(name, set())
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_circle_in_the_tree() -> None:
    assert circles(import_graph(ROOT, OURS)) == []


def test_only_the_entry_point_imports_the_app_module() -> None:
    graph = import_graph(ROOT, OURS - {"tests"})
    assert {name for name, targets in graph.items() if "http_front.app" in targets} == {"http_front.main"}


def test_the_circle_check_sees_a_lazy_circle(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "a.py").write_text("from pkg import b\n")
    (tmp_path / "pkg" / "b.py").write_text("def f():\n    from . import c\n")
    (tmp_path / "pkg" / "c.py").write_text("import pkg.a.thing\n")
    (tmp_path / "pkg" / "d.py").write_text("from pkg.a import x\n")
    graph = import_graph(tmp_path, {"pkg"})
    assert graph["pkg.d"] == {"pkg.a"}
    assert circles(graph) == [["pkg.a", "pkg.b", "pkg.c"]]
