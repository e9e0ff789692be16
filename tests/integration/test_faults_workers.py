"""Worker faults under load, through real processes (two CPU workers of the bundled model): a worker killed
in the middle of a batch, a worker stalled past its liveness, a worker that crash-loops. In every case each
accepted request gets exactly one answer and every answered vector is right."""

from __future__ import annotations

import itertools
import os
import signal

import pytest

from tests.conftest import Cluster, eventually
from tests.integration.faults import (
    Load,
    TextPool,
    broker_counter,
    busy_worker,
    check_outcomes,
    health,
    next_event,
    wait_workers,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster_args() -> tuple[str, ...]:
    return ("--workers", "2", "--threads", "1")


def worker_pids(cluster: Cluster) -> set[int]:
    return {w["pid"] for w in health(cluster).get("workers") or []}



@pytest.mark.parametrize("round_", range(3))
def test_sigkill_of_a_worker_mid_batch_loses_nothing(cluster: Cluster, pool: TextPool, round_: int) -> None:
    wait_workers(cluster, 2)
    mark = len(cluster.events)
    requeued = broker_counter(cluster, "requeued")
    with Load(cluster.url, pool, clients=16) as load:
        load.wait_answers(10)
        victim = busy_worker(cluster)
        os.kill(victim["pid"], signal.SIGKILL)
        cluster.wait_event("worker_exited", lambda d: d["pid"] == victim["pid"], after=mark, timeout=30)
        answered = len(load.outcomes)
        load.wait_answers(answered + 16)  # the survivor answers the requeued jobs and new ones
    tally = check_outcomes(load.outcomes)
    assert tally["200"] == len(load.outcomes)
    assert broker_counter(cluster, "requeued") > requeued  # it did die holding jobs


def test_a_stalled_worker_is_presumed_dead_and_its_late_replies_are_ignored(cluster: Cluster,
                                                                           pool: TextPool) -> None:
    wait_workers(cluster, 2)
    mark = len(cluster.events)
    requeued = broker_counter(cluster, "requeued")
    with Load(cluster.url, pool, clients=16) as load:
        load.wait_answers(10)
        victim = busy_worker(cluster)["pid"]
        os.kill(victim, signal.SIGSTOP)
        try:  # past its liveness (3 heartbeats) the broker forgets it and requeues its jobs
            eventually(lambda: victim not in worker_pids(cluster), "the stalled worker is dropped", 30)
            answered = len(load.outcomes)
            load.wait_answers(answered + 12)
        finally:
            os.kill(victim, signal.SIGCONT)
        # back, it finds itself unknown to the broker, drops what it held and registers again by itself
        eventually(lambda: victim in worker_pids(cluster), "the resumed worker registers again", 60)
        answered = len(load.outcomes)
        load.wait_answers(answered + 12)
    tally = check_outcomes(load.outcomes)
    assert tally["200"] == len(load.outcomes)
    assert broker_counter(cluster, "requeued") > requeued  # its jobs went to the other worker
    assert not [e for e in cluster.events[mark:] if e["type"] == "worker_exited"]  # nobody restarted it


def test_a_crash_looping_worker_backs_off_is_reported_failed_and_retried(cluster: Cluster,
                                                                         pool: TextPool) -> None:
    """worker-1 dies each time it starts (SIGKILL as soon as the supervisor starts it again): the restarts
    back off (1 s doubling), after 5 quick failures it is reported failed in PROGRESS and /health, and is
    still retried later; worker-0 serves every request meanwhile."""
    victim = "worker-1"
    wait_workers(cluster, 2)
    [pid] = [w["pid"] for w in health(cluster)["workers"] if w["id"] == victim]
    cursor = len(cluster.events)
    delays: list[float] = []
    with Load(cluster.url, pool, clients=4, pause=0.2) as load:
        os.kill(pid, signal.SIGKILL)
        for _ in range(8):  # at most FAILED_AFTER kills, fewer if earlier tests' kills still count
            cursor, exited = next_event(cluster, "worker_exited", lambda d: d["worker"] == victim, cursor)
            delays.append(exited["data"]["restart_in"])
            failed = [e for e in cluster.events[cursor:] if e["type"] == "worker_failed"]
            if failed or exited["data"]["restart_in"] >= 16:
                break
            cursor, restarted = next_event(cluster, "worker_restarted", lambda d: d["worker"] == victim, cursor)
            os.kill(restarted["data"]["pid"], signal.SIGKILL)
        _, failed_event = next_event(cluster, "worker_failed", lambda d: d["worker"] == victim, cursor, 10)
        assert failed_event["data"]["reason"] == "crash loop" and failed_event["data"]["retry_in"] >= 16
        assert delays == sorted(delays) and all(b == 2 * a for a, b in itertools.pairwise(delays)), delays
        down = eventually(lambda: [w for w in health(cluster)["workers_down"] if w["id"] == victim
                                   and w["state"] == "failed"], "/health reports the failed worker", 30)
        assert down[0]["reason"].startswith("crash loop") and down[0]["restart_in"] >= 16
        answered = len(load.outcomes)
        load.wait_answers(answered + 8)  # worker-0 still serves
    check_outcomes(load.outcomes)
    assert all(o.status == 200 for o in load.outcomes)
    # retried later (no more kills): it serves again and /health no longer lists it as down
    cluster.wait_event("worker_restarted", lambda d: d["worker"] == victim, after=cursor, timeout=60)
    eventually(lambda: len(health(cluster)["workers"]) == 2 and not health(cluster)["workers_down"],
               "the failed worker serves again", 120)
