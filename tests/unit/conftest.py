"""Fixtures of the unit tier."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.unit.inproc import InprocCluster


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
