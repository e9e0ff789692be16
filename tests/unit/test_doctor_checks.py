"""embed-cluster doctor's checks in-process, for what a running machine cannot show (an old Python); the
real runs, a venv without pyzmq among them, are in tests/integration/test_doctor.py."""

from __future__ import annotations

import re
import sys

import pytest

from supervisor.doctor import DEPENDENCIES, check_dependencies, check_python
from tests.conftest import ROOT


def test_the_dependency_table_is_pyproject_s() -> None:
    toml = pytest.importorskip("tomllib" if sys.version_info >= (3, 11) else "tomli")
    declared = toml.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    normalize = lambda requirement: re.sub(r"\s+", "", requirement).lower()  # noqa: E731
    assert sorted(map(normalize, DEPENDENCIES.values())) == sorted(map(normalize, declared))


def test_an_old_python_is_incompatible() -> None:
    old = check_python((3, 9, 18))
    assert not old.ok and old.code == "PYTHON_VERSION_INCOMPATIBLE" and "3.9.18" in old.message
    assert "3.10" in old.message
    assert check_python((3, 10, 0)).ok and check_python(tuple(sys.version_info[:3])).ok


def test_missing_modules_are_named_by_their_distribution() -> None:
    check = check_dependencies({"json": "json", "no_such_module_here": "no-such-dist>=1.2",
                                "no.such.sub": "other-dist==2"})
    assert not check.ok and check.code == "PYTHON_DEPS_MISSING"
    assert check.details["missing"] == ["no-such-dist", "other-dist"]
    assert check.fix == f"{sys.executable} -m pip install 'no-such-dist>=1.2' 'other-dist==2'"
    assert check_dependencies({"json": "json"}).ok
