"""The front spreads one request over the workers (one share of its estimated work each), so that a lone
request keeps every worker busy; the answer is the same as from one worker, in input order."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from embed_common.jobs import spread_bounds
from tests.unit.inproc import InprocCluster, fake_vectors

TEXTS = [f"text {i} " + "word " * (i % 9) for i in range(32)]


@pytest.fixture()
def cluster() -> Iterator[InprocCluster]:
    c = InprocCluster()
    yield c
    c.close()


def test_one_request_is_shared_by_two_workers(cluster: InprocCluster) -> None:
    first, second = cluster.add_worker(), cluster.add_worker()
    cluster.wait_status(lambda s: len(s["workers"]) == 2, "two workers in the front's status")
    probes = [len(first.embedder.batches), len(second.embedder.batches)]  # each worker encoded its probe
    result = cluster.client.embed(TEXTS, True, 30.0)
    assert np.allclose(result.vectors, fake_vectors(TEXTS), atol=1e-6)
    done = [sum(first.embedder.batches[probes[0]:]), sum(second.embedder.batches[probes[1]:])]
    assert sum(done) == len(TEXTS) and min(done) >= len(TEXTS) // 4, done


def test_with_one_worker_a_request_stays_one_job(cluster: InprocCluster) -> None:
    only = cluster.add_worker()
    probe = len(only.embedder.batches)
    sent = []
    submit = cluster.client._submit

    def counting_submit(texts: list[str], *args: object) -> object:  # a spy on the real method
        sent.append(len(texts))
        return submit(texts, *args)

    cluster.client._submit = counting_submit  # type: ignore[method-assign]
    result = cluster.client.embed(TEXTS, True, 30.0)
    assert sent == [32] and sum(only.embedder.batches[probe:]) == 32
    assert np.allclose(result.vectors, fake_vectors(TEXTS), atol=1e-6)


@pytest.mark.parametrize(("work", "parts", "bounds"), [
    ([1.0] * 10, 2, [0, 5, 10]),
    ([1.0] * 9, 3, [0, 3, 6, 9]),
    ([1.0, 1.0, 1.0, 10.0], 2, [0, 3, 4]),  # the long text last: a run of its own
    ([10.0, 1.0, 1.0, 1.0], 2, [0, 1, 4]),
    ([5.0, 1.0, 1.0, 1.0, 1.0, 1.0], 2, [0, 1, 6]),  # the cut nearest the half, not the first past it
    ([1.0, 1.0], 4, [0, 1, 2]),  # never an empty run
    ([1.0] * 5, 1, [0, 5]),
])
def test_spread_bounds_cut_where_the_work_is_shared_evenly(work, parts, bounds) -> None:
    assert spread_bounds(work, parts) == bounds
