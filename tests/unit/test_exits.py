"""The one exit-code table (embed_common/exits.py): every part returns a code from it, never a bare number
(the supervisor's reading of a REFUSED worker: tests/unit/test_reliability.py)."""

from __future__ import annotations

import ast
from pathlib import Path

from embed_common.exits import TABLE, ExitCode, table_markdown
from tests.unit.source_tree import walked

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("broker", "worker", "http_front", "embed_common", "supervisor", "embed_client")
# functions whose return value is a process's exit status (``sys.exit(main())`` and the parts' ``run``)
EXIT_FUNCTIONS = {"main", "run", "_run", "run_embed", "run_doctor"}


def _bare_ints(node: ast.expr | None) -> bool:
    """Whether an expression is an int literal, or a choice between expressions that are."""
    if isinstance(node, ast.IfExp):
        return _bare_ints(node.body) or _bare_ints(node.orelse)
    return isinstance(node, ast.Constant) and type(node.value) is int


def bare_exit_codes(root: Path = ROOT) -> list[str]:
    """Where our code exits with a number instead of an ExitCode: ``sys.exit(3)``, ``os._exit(1)``, or a
    ``return 3`` in a function whose result is an exit status."""
    found = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            nodes = walked(path)
            for function in nodes:
                if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)) and function.name in EXIT_FUNCTIONS:
                    found += [f"{path.relative_to(root)}:{node.lineno}" for node in ast.walk(function)
                              if isinstance(node, ast.Return) and _bare_ints(node.value)]
            for node in nodes:
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                        and node.func.attr in ("exit", "_exit") and node.args and _bare_ints(node.args[0])):
                    found.append(f"{path.relative_to(root)}:{node.lineno}")
    return found


def test_no_part_exits_with_a_bare_number() -> None:
    assert bare_exit_codes() == []


def test_the_check_sees_a_bare_code(tmp_path: Path) -> None:
    (tmp_path / "worker").mkdir()
    (tmp_path / "worker" / "main.py").write_text("import sys\n\ndef run():\n    return 3 if x else 0\n\nsys.exit(1)\n")
    assert bare_exit_codes(tmp_path) == ["worker/main.py:4", "worker/main.py:6"]


def test_the_enum_is_the_table() -> None:
    assert [(c.name, c.value) for c in ExitCode] == [(s.name, s.code) for s in TABLE]
    assert len({s.code for s in TABLE}) == len(TABLE) and all(s.meaning and s.parts for s in TABLE)
    assert ExitCode.OK == 0 and ExitCode.REFUSED == 3  # the numbers a shell, docker and older scripts see


def test_the_docs_table_is_the_exit_table() -> None:
    text = (ROOT / "docs" / "exit-codes.md").read_text()
    rows = "\n".join(line for line in text.splitlines() if line.startswith("|"))
    assert rows == table_markdown(), "paste `python -m embed_common.exits` into docs/exit-codes.md"
