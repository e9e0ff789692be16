"""Our modules parsed once a session. Several tests read the whole tree (error codes, events, exit codes,
imports, markers); each parse of it is CPU the fast tier would spend again and again."""

from __future__ import annotations

import ast
import functools
from pathlib import Path


@functools.cache
def _parse(source: str, filename: str) -> ast.Module:
    return ast.parse(source, filename=filename)


def parsed(path: Path) -> ast.Module:
    """The module at ``path``, parsed from what it holds now (keyed by its text: a file rewritten by a test is
    parsed again). Callers only read the tree."""
    return _parse(path.read_text(), str(path))


@functools.cache
def _walk(source: str, filename: str) -> tuple[ast.AST, ...]:
    return tuple(ast.walk(_parse(source, filename)))


def walked(path: Path) -> tuple[ast.AST, ...]:
    """Every node of :func:`parsed`'s tree, in ``ast.walk`` order, listed once (each scan of the tree would
    otherwise walk it again)."""
    return _walk(path.read_text(), str(path))


def forget() -> None:
    """Drop the parsed modules (at the session's end: the ~150,000 nodes of the whole tree kept alive would be
    traversed again by each collection the interpreter makes on its way out, seconds of a fast tier's wall)."""
    _walk.cache_clear()
    _parse.cache_clear()
