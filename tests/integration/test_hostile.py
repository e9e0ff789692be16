"""Hostile and heavy HTTP clients against a real cluster (bundled model, one CPU worker), issue 12's cases 1-3
and the front's overload and client-gone defences: idle sockets past waitress's old limit, an over-limit body
from a client that sends all before it reads, probes under 48 busy clients, more embed requests than the front
can hold, a client that leaves before its answer. Each prints the figures docs/reliability.md
quotes (run with ``-s`` to see them). Start-up faults and shutdown: tests/integration/test_hostile_lifecycle.py.
"""

from __future__ import annotations

import json
import socket
import statistics
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import pytest
import requests

from embed_common.jobs import job_starts
from tests.conftest import Cluster, eventually
from tests.integration.faults import Load, TextPool, broker_counter, check_outcomes, post_embed

pytestmark = pytest.mark.slow

MAX_CONNECTIONS = 200
HTTP_QUEUE = 24
MAX_BODY = 64 * 1024
IDLE_TIMEOUT = 3.0
PROBE_BOUND = 0.5  # seconds: an orchestrator's liveness probe typically allows 1 s
PROBES = ("/livez", "/readyz", "/health", "/metrics")


@pytest.fixture(scope="module")
def cluster_args() -> tuple[str, ...]:
    return ("--workers", "1", "--precision", "fp32", "--max-connections", str(MAX_CONNECTIONS),
            "--http-queue", str(HTTP_QUEUE), "--max-body-bytes", str(MAX_BODY), "--idle-timeout", str(IDLE_TIMEOUT))


def timed_get(url: str, timeout: float = 10.0) -> tuple[float, requests.Response]:
    start = time.monotonic()
    r = requests.get(url, timeout=timeout)
    return time.monotonic() - start, r


def open_idle(port: int, n: int) -> list[socket.socket]:
    sockets = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        sockets.append(s)
    return sockets


def closed_by_server(s: socket.socket, wait: float) -> bool:
    """True when the server closed ``s`` (EOF or reset) within ``wait`` seconds."""
    s.settimeout(wait)
    try:
        return s.recv(1) == b""
    except TimeoutError:
        return False
    except OSError:
        return True


def test_info_states_the_connection_limits(cluster: Cluster) -> None:
    limits = cluster.get("/info").json()["limits"]
    assert limits["max_connections"] == MAX_CONNECTIONS
    assert limits["idle_timeout"] == IDLE_TIMEOUT
    assert limits["http_queue"] == HTTP_QUEUE


def test_idle_sockets_past_the_old_limit_lock_nobody_out_and_the_oldest_are_closed(cluster: Cluster) -> None:
    count = MAX_CONNECTIONS + 100  # waitress's own limit was 100 connections, kept for 120 s each
    sockets = open_idle(cluster.port, count)
    try:
        health_s, r = timed_get(cluster.url + "/health")
        assert r.status_code == 200 and r.json()["status"] == "ok"
        start = time.monotonic()
        vectors = cluster.embed(["still serving with hundreds of idle sockets open"])
        embed_s = time.monotonic() - start
        assert len(vectors) == 1
        assert health_s < 2.0 and embed_s < 5.0, (health_s, embed_s)
        # the oldest idle ones made room; the newest are still open
        assert closed_by_server(sockets[0], 2.0), "the oldest idle connection is still open"
        assert not closed_by_server(sockets[-1], 0.2), "the newest connection was closed"
        closed = sum(closed_by_server(s, 0.01) for s in sockets)
        print(f"\n{count} idle sockets: /health {health_s * 1000:.0f} ms, /embed {embed_s * 1000:.0f} ms; "
              f"{closed} oldest closed by the front")
        assert closed >= count - MAX_CONNECTIONS
    finally:
        for s in sockets:
            s.close()


def test_an_idle_connection_is_closed_after_the_idle_timeout(cluster: Cluster) -> None:
    [s] = open_idle(cluster.port, 1)
    try:
        start = time.monotonic()
        assert closed_by_server(s, IDLE_TIMEOUT + 5.0), "an idle connection outlived --idle-timeout"
        took = time.monotonic() - start
        print(f"\nidle connection closed after {took:.1f} s (--idle-timeout {IDLE_TIMEOUT})")
        assert took >= IDLE_TIMEOUT - 0.5
    finally:
        s.close()


def test_a_client_that_sends_its_whole_body_first_gets_the_413_json(cluster: Cluster) -> None:
    body = json.dumps({"texts": ["x" * 1000] * 8000}).encode()  # 8 MB: far past the socket buffers
    assert len(body) > 100 * MAX_BODY
    for attempt in range(3):  # a connection reset shows up only sometimes: try it a few times
        request = urllib.request.Request(cluster.url + "/embed", data=body,
                                         headers={"Content-Type": "application/json"})
        start = time.monotonic()
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(request, timeout=30)
        took = time.monotonic() - start
        assert caught.value.code == 413
        error = json.loads(caught.value.read())["error"]
        assert error["code"] == "PAYLOAD_TOO_LARGE", error
        # requests sends it the same way; and a chunked body (no Content-Length) too
        r = requests.post(cluster.url + "/embed", data=body, headers={"Content-Type": "application/json"},
                          timeout=30)
        assert r.status_code == 413 and r.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"
        chunks = (body[i:i + 65536] for i in range(0, len(body), 65536))
        r = requests.post(cluster.url + "/embed", data=chunks, headers={"Content-Type": "application/json"},
                          timeout=30)
        assert r.status_code == 413 and r.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"
        if attempt == 0:
            print(f"\n413 JSON read by urllib after sending {len(body) / 1e6:.1f} MB: {took * 1000:.0f} ms")
    assert cluster.embed(["served after the refused bodies"])


def test_probes_answer_within_the_bound_under_48_busy_clients(cluster: Cluster, pool: TextPool) -> None:
    timings: dict[str, list[float]] = {path: [] for path in PROBES}
    with Load(cluster.url, pool, clients=48, sizes=(16,)) as load:
        load.wait_answers(48, timeout=120)
        for _ in range(5):
            for path in PROBES:
                took, r = timed_get(cluster.url + path)
                assert r.status_code == 200, (path, r.status_code, r.text[:200])
                timings[path].append(took)
        busy = len(load.outcomes)
    outcomes = load.outcomes
    check_outcomes(outcomes)
    report = ", ".join(f"{p} median {statistics.median(t) * 1000:.0f} ms max {max(t) * 1000:.0f} ms"
                       for p, t in timings.items())
    print(f"\nprobes with 48 clients sending 16-text requests ({busy} answered by then): {report}")
    worst = {p: max(t) for p, t in timings.items()}
    assert all(t < PROBE_BOUND for t in worst.values()), worst


def test_embed_requests_past_what_the_front_holds_get_a_fast_503_overloaded(cluster: Cluster,
                                                                            pool: TextPool) -> None:
    clients = 160  # far past 32 request threads + HTTP_QUEUE waiting
    barrier = threading.Barrier(clients)
    outcomes: list[Any] = []
    lock = threading.Lock()

    def client(index: int) -> None:
        texts = pool.texts[(index * 16) % 180:(index * 16) % 180 + 16]
        with requests.Session() as session:
            barrier.wait(timeout=30)
            outcome = post_embed(session, cluster.url, texts, pool, index, timeout=90)
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(outcomes) == clients
    tally = check_outcomes(outcomes, allowed={"OVERLOADED"})
    overloaded = [o for o in outcomes if o.code == "OVERLOADED"]
    assert overloaded, f"no request was refused: {dict(tally)}"
    assert all(o.status == 503 and o.retry_after for o in overloaded)
    slowest = max(o.done - o.sent for o in overloaded)
    print(f"\n{clients} concurrent 16-text requests: {dict(tally)}; slowest 503 OVERLOADED "
          f"{slowest * 1000:.0f} ms")
    assert slowest < 2.0, slowest
    assert cluster.embed(["served after the overload"])


def test_jobs_of_a_client_that_went_away_are_dropped_before_compute(cluster: Cluster, pool: TextPool) -> None:
    before = broker_counter(cluster, "cancelled")
    submitted = broker_counter(cluster, "submitted")
    texts = [f"{i}: " + " ".join(pool.texts[(i + k) % 200] for k in range(2))[:110] for i in range(400)]
    jobs = len(job_starts(texts))  # the jobs one such request becomes (one worker: no spread)
    body = json.dumps({"texts": texts}).encode()
    assert len(body) < MAX_BODY
    results: list[int] = []

    def hold_the_worker() -> None:  # requests ahead in the queue, so that the next one's jobs wait
        results.append(requests.post(cluster.url + "/embed", json={"texts": texts}, timeout=120).status_code)

    def submitted_since(count: int) -> bool:
        return broker_counter(cluster, "submitted") - submitted >= count

    holders = [threading.Thread(target=hold_the_worker, daemon=True) for _ in range(3)]
    for holder in holders:
        holder.start()
    eventually(lambda: submitted_since(len(holders) * jobs), "the holders' jobs reached the broker", timeout=30)
    with socket.create_connection(("127.0.0.1", cluster.port), timeout=10) as s:  # its jobs, then gone
        s.sendall(b"POST /embed HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n" % len(body) + body)
        eventually(lambda: submitted_since((len(holders) + 1) * jobs), "the front queued the request's jobs",
                   timeout=30)
    left = time.monotonic()
    cancelled = eventually(lambda: broker_counter(cluster, "cancelled") - before or None,
                           "the jobs of the client that left were cancelled", timeout=15, interval=0.1)
    print(f"\nclient gone: {cancelled:.0f} queued jobs dropped {time.monotonic() - left:.2f} s after it left")
    for holder in holders:
        holder.join(timeout=120)
    assert results == [200] * len(holders)
