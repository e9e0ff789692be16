"""Stopping the cluster under load, through real processes: SIGTERM to the supervisor finishes what is in
flight, refuses what is new and exits 0; SIGKILL of the supervisor leaves no process behind."""

from __future__ import annotations

import os
import signal
import socket
import time

import pytest
import requests

from tests.conftest import Cluster, eventually
from tests.integration.faults import Load, TextPool, alive, busy_worker, check_outcomes, children_of

pytestmark = pytest.mark.slow


def wait_gone(pids: list[int], timeout: float) -> float:
    """Seconds until none of ``pids`` is alive; fails loudly when some still are after ``timeout``."""
    start = time.monotonic()
    eventually(lambda: not any(alive(pid) for pid in pids),
               lambda: f"all of {pids} gone; still alive: {[pid for pid in pids if alive(pid)]}", timeout=timeout)
    return time.monotonic() - start


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_sigterm_under_load_finishes_in_flight_requests_refuses_new_ones_and_exits_0(pool: TextPool) -> None:
    cluster = Cluster("--workers", "1")
    try:
        cluster.wait_ready()
        parts = list(children_of(cluster.proc.pid))
        idle = requests.Session()  # an idle keep-alive connection (a desktop app's HTTP agent keeps one)
        assert idle.get(cluster.url + "/health", timeout=30).status_code == 200
        with Load(cluster.url, pool, clients=16, pause=0.05) as load:
            load.wait_answers(10)
            busy_worker(cluster)
            signalled = time.monotonic()
            cluster.proc.send_signal(signal.SIGTERM)
            code = cluster.proc.wait(timeout=90)
        types = [e["type"] for e in cluster.events]
        assert code == 0, cluster.log()
        assert types.index("shutdown_started") < types.index("shutdown_complete")
        wait_gone(parts, 10)
    finally:
        cluster.stop()
    before = [o for o in load.outcomes if o.sent < signalled]
    after = [o for o in load.outcomes if o.sent >= signalled]
    # everything sent before SIGTERM was finished, with the right vectors
    check_outcomes(before)
    assert all(o.status == 200 for o in before)
    assert any(o.done > signalled for o in before), "no request was in flight at SIGTERM"
    # what came after was refused with 503 SHUTTING_DOWN, or found the port closed
    refused = [o for o in after if o.code == "SHUTTING_DOWN"]
    assert refused and all(o.status == 503 and o.retry_after for o in refused)
    closed = [o for o in after if o.exception]
    assert all(o.exception == "ConnectionError" for o in closed), {o.exception for o in closed}
    check_outcomes([o for o in after if not o.exception], allowed={"SHUTTING_DOWN"}, min_ok=0)


def test_sigkill_of_the_supervisor_leaves_no_orphans_and_answers_what_it_accepted(pool: TextPool) -> None:
    cluster = Cluster("--workers", "1")
    try:
        cluster.wait_ready()
        parts = list(children_of(cluster.proc.pid))
        assert len(parts) == 3, parts  # broker, front, worker
        with Load(cluster.url, pool, clients=16, pause=0.05) as load:
            load.wait_answers(10)
            busy_worker(cluster)
            killed = time.monotonic()
            os.kill(cluster.proc.pid, signal.SIGKILL)
            # every part notices its parent is gone and exits by itself, within seconds
            took = wait_gone(parts, 15)
        assert port_is_free(cluster.port)
        ipc = next(e for e in cluster.events if e["type"] == "broker_listening")["data"]["clients"]
        assert not os.path.exists(os.path.dirname(ipc.removeprefix("ipc://")))  # no litter in /tmp either
    finally:
        cluster.stop()
    # the requests in flight at the kill got an answer (done, or 503 SHUTTING_DOWN), not a cut connection
    in_flight = [o for o in load.outcomes if o.sent < killed]
    check_outcomes(in_flight, allowed={"SHUTTING_DOWN"}, min_ok=0)
    later = [o for o in load.outcomes if o.sent >= killed and o.exception]
    assert all(o.exception == "ConnectionError" for o in later)
    print(f"all parts gone {took:.1f}s after SIGKILL of the supervisor")
