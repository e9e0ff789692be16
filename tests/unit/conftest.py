"""Fixtures of the unit tier, and its rule (tests/unit/fast_tier.py) held around every test and module import."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import falcon.testing
import pytest

from http_front.app import create_app
from tests.unit import source_tree
from tests.unit.fast_tier import Guard
from tests.unit.inproc import LIMITS, InprocCluster, Served, eventually

GUARD = Guard()


def _held(report: Any) -> Any:
    """The report of a phase that broke the rule is a failure naming what it did, whatever else happened."""
    if GUARD.violations.found and report.outcome != "failed":
        report.outcome = "failed"
        report.longrepr = "\n".join(GUARD.violations.found)
    return report


# these hooks run for the unit tier's items and modules only (pytest calls them through the item's conftests)
@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Any:
    with GUARD.armed():
        report = yield
    return _held(report)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Any:
    with GUARD.armed():
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Any:
    with GUARD.armed():
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Any:
    with GUARD.armed():
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    return _held((yield))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    source_tree.forget()


@pytest.fixture
def make_cluster() -> Iterator[Callable[..., InprocCluster]]:
    made: list[InprocCluster] = []

    def make(**settings: object) -> InprocCluster:
        cluster = InprocCluster(**settings)
        made.append(cluster)
        return cluster

    yield make
    for cluster in made:
        cluster.close()


@pytest.fixture(scope="module")
def app_options() -> dict[str, Any]:
    """``create_app``'s keywords for the module's ``served`` app; a module that needs others overrides this
    fixture. With an ``api_key``, the test client sends it on every request."""
    return {"limits": LIMITS}


@pytest.fixture(scope="module")
def served(app_options: dict[str, Any]) -> Iterator[Served]:
    """One in-process cluster with one fake worker and the app in front of it, for the module."""
    cluster = InprocCluster()
    try:
        cluster.add_worker()  # FakeEmbedder: a token per word, 32 tokens with [CLS] and [SEP]
        key = app_options.get("api_key")
        headers = {"Authorization": f"Bearer {key}"} if key else None
        client = falcon.testing.TestClient(create_app(cluster.client, **app_options), headers=headers)
        eventually(lambda: client.simulate_get("/readyz").status_code == 200, "the app sees the worker")
        yield Served(client, cluster)
    finally:
        cluster.close()


@pytest.fixture
def client(served: Served) -> falcon.testing.TestClient:
    return served.client
