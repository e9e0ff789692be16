"""The one PROGRESS event table (embed_common/events.py): every event our code prints is a row of it, emit()
checks each line against it, and the README's table and the TypeScript union are written from it."""

from __future__ import annotations

import ast
import io
import logging
import re
from pathlib import Path

import pytest

from embed_common import events, progress
from embed_common.events import EVENTS, TABLE
from tests.unit.source_tree import walked

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("broker", "worker", "http_front", "embed_common", "supervisor", "embed_client")
EMITTERS = {"emit", "emit_once", "on_event"}  # the calls that print (or hand up) an event


def _types(node: ast.expr) -> list[str]:
    if isinstance(node, ast.IfExp):  # on_event("worker_ready" if first else "worker_reconnected", ...)
        return _types(node.body) + _types(node.orelse)
    return [node.value] if isinstance(node, ast.Constant) and isinstance(node.value, str) else []


def emitted() -> list[tuple[str, str, ast.expr | None]]:
    """(where, event type, its data when written out) of every emit with a literal type in our packages."""
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in walked(path):
                if not isinstance(node, ast.Call) or len(node.args) < 2:
                    continue
                name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                if name in EMITTERS:
                    where = f"{path.relative_to(ROOT)}:{node.lineno}"
                    # emit_once(key, type, data): the supervisor's once-per-key event; the others (type, data)
                    kind_at = 1 if name == "emit_once" else 0
                    if len(node.args) > kind_at + 1:
                        found += [(where, kind, node.args[kind_at + 1]) for kind in _types(node.args[kind_at])]
    return found


def test_every_event_written_in_the_source_is_a_row_and_every_row_is_written() -> None:
    found = emitted()
    assert len(found) > 30  # the scan sees them
    assert [(where, kind) for where, kind, _ in found if kind not in EVENTS] == []
    assert {kind for _, kind, _ in found} == set(EVENTS)  # no row that nothing prints


def test_the_data_written_out_at_each_emit_fits_its_row() -> None:
    wrong = []
    for where, kind, data in emitted():
        if not isinstance(data, ast.Dict) or None in data.keys:  # built elsewhere, or with **: checked by emit()
            continue
        keys = {key.value for key in data.keys if isinstance(key, ast.Constant)}
        spec = EVENTS[kind]
        missing = spec.required - keys - {"worker"}  # a worker's emit adds its name (worker/main.py)
        extra = set() if spec.open else keys - spec.fields
        if missing or extra:
            wrong.append((where, kind, sorted(missing), sorted(extra)))
    assert wrong == []


def test_rows_are_unique_and_say_who_prints_them_and_why() -> None:
    assert len(EVENTS) == len(TABLE)
    for spec in TABLE:
        assert spec.meaning and spec.emitter in ("supervisor", "worker", "front", "broker", "embed"), spec
        assert spec.printer in ("up", "embed"), spec
        assert all(name.isidentifier() and kind for name, _, kind in spec.members()), spec


def test_emit_checks_each_event_against_the_table(monkeypatch: pytest.MonkeyPatch,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    out = io.StringIO()
    monkeypatch.setattr(progress, "STRICT", True)
    with pytest.raises(progress.EventError, match="not an event"):
        progress.emit("worker_redy", {"worker": "w"}, out)
    with pytest.raises(progress.EventError, match="'pid' missing"):
        progress.emit("worker_started", {"worker": "w", "device": "cpu"}, out)
    with pytest.raises(progress.EventError, match="'colour' not in"):
        progress.emit("shutdown_started", {"colour": "red"}, out)
    progress.emit("model_prepared", {"model": "m", "step": "s", "seconds": 1.0, "more": 1}, out)  # an open row
    assert out.getvalue().count("\n") == 1
    monkeypatch.setattr(progress, "STRICT", False)  # in service: logged, and the line still goes out
    with caplog.at_level(logging.ERROR, logger="embed_common.progress"):
        progress.emit("worker_redy", {}, out)
    assert "worker_redy" in caplog.text and out.getvalue().count("\n") == 2


def test_the_readme_table_is_the_event_table() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## PROGRESS events\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    assert "\n".join(rows) == events.readme_table(), "paste `python -m embed_common.events readme` into the README"
    assert "`worker_disconnected`" in section
    # the TypeScript tests (clients/typescript/test/events.test.js) parse every `snake_case` name there as an event
    named = set(re.findall(r"`([a-z]+(?:_[a-z]+)+)`", section))
    assert named - {spec.type for spec in TABLE if spec.printer == "up"} == set()


def test_the_typescript_union_is_written_from_the_table() -> None:
    written = (ROOT / "clients/typescript/src/progress_events.ts").read_text()
    assert written == events.typescript(), ("run `python -m embed_common.events typescript > "
                                           "clients/typescript/src/progress_events.ts`")
    assert all(f'"{spec.type}"' in written for spec in TABLE if spec.printer == "up")
