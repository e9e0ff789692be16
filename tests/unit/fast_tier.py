"""The fast tier's rule, enforced: a unit test (its module's import, its fixtures, its body) loads no model
library and starts no process. What breaks the rule is refused where it happens and fails the test that did it,
with a message naming the way out (tests/integration). tests/unit/conftest.py installs it around every phase.

The import half can only see a first import: run alone (``python -m pytest tests/unit``), the tier starts
without torch, so any unit test that imports it fails; in the whole suite the integration tier has loaded it
already. The process half holds in both."""

from __future__ import annotations

import _posixsubprocess
import importlib.abc
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

MODEL_LIBRARIES = ("torch", "sentence_transformers", "transformers", "onnxruntime")
WAY_OUT = "the fast tier loads no model and starts no process: move this test to tests/integration"


class Violations:
    """What the test running now did against the rule (cleared per test phase)."""

    def __init__(self) -> None:
        self.found: list[str] = []

    def add(self, what: str) -> str:
        message = f"{what}: {WAY_OUT}"
        self.found.append(message)
        return message


class _ModelImports(importlib.abc.MetaPathFinder):
    """Refuses the first import of a model library while armed (an already imported one is not seen)."""

    def __init__(self, violations: Violations) -> None:
        self.violations = violations
        self.armed = False

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if self.armed and name.partition(".")[0] in MODEL_LIBRARIES:
            raise ImportError(self.violations.add(f"imported {name}"))
        return None


class Guard:
    """Installed once; ``armed()`` holds the rule for the duration of one test phase or module import."""

    def __init__(self) -> None:
        self.violations = Violations()
        self._imports = _ModelImports(self.violations)
        sys.meta_path.insert(0, self._imports)

    @contextmanager
    def armed(self) -> Iterator[Violations]:
        self.violations.found.clear()
        saved = (_posixsubprocess.fork_exec, os.fork, os.posix_spawn, os.posix_spawnp)
        violations = self.violations

        def refuse(what: str) -> Any:
            def refused(*args: Any, **kwargs: Any) -> Any:
                raise RuntimeError(violations.add(what))
            return refused

        # subprocess and multiprocessing's spawn and forkserver start children through fork_exec; its fork
        # start method through os.fork
        _posixsubprocess.fork_exec = refuse("started a process")
        os.fork = refuse("forked a process")
        os.posix_spawn = os.posix_spawnp = refuse("spawned a process")
        self._imports.armed = True
        try:
            yield violations
        finally:
            self._imports.armed = False
            _posixsubprocess.fork_exec, os.fork, os.posix_spawn, os.posix_spawnp = saved
