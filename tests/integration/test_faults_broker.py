"""Faults around the broker and the front, through real processes (one CPU worker of the bundled model):
the broker killed under load, garbage on the broker's sockets, a flood far past capacity, and oversized or
malformed HTTP bodies. Every accepted request gets exactly one answer, and every answered vector is right."""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import socket
import statistics
import threading

import msgpack
import pytest
import requests
import zmq

from embed_common import protocol
from embed_common.protocol import Command
from tests.conftest import Cluster, eventually
from tests.integration.faults import (
    Load,
    TextPool,
    broker_counter,
    busy_worker,
    check_outcomes,
    children_of,
    health,
    part_pid,
    post_embed,
    rss_mib,
    wait_workers,
)

pytestmark = pytest.mark.slow

MAX_QUEUE_TEXTS = 600  # small, so that a flood from a test overflows it
MAX_BODY_BYTES = 1_000_000


@pytest.fixture(scope="module")
def cluster_args() -> tuple[str, ...]:
    return ("--workers", "1", "--max-queue-texts", str(MAX_QUEUE_TEXTS), "--max-body-bytes", str(MAX_BODY_BYTES))



def broker_pid_now(cluster: Cluster) -> int | None:
    pids = [pid for pid, cmd in children_of(cluster.proc.pid).items() if " supervisor.cli broker " in cmd]
    return pids[0] if pids else None


@pytest.mark.parametrize("round_", range(2))
def test_sigkill_of_the_broker_under_load_loses_nothing(cluster: Cluster, pool: TextPool, round_: int) -> None:
    """The supervisor restarts the broker on the same address; the worker registers again by itself and the
    front re-sends every job in flight with its id: each request is answered once, with the right vectors."""
    wait_workers(cluster, 1)
    old = part_pid(cluster, "broker")
    mark = len(cluster.events)
    with Load(cluster.url, pool, clients=16) as load:
        load.wait_answers(10)
        busy_worker(cluster)  # jobs are in flight on the worker right now
        os.kill(old, signal.SIGKILL)
        cluster.wait_event("broker_listening", after=mark, timeout=60)
        eventually(lambda: broker_pid_now(cluster) not in (None, old), "a new broker process")
        answered = len(load.outcomes)
        load.wait_answers(answered + 24)
    tally = check_outcomes(load.outcomes)
    assert tally["200"] == len(load.outcomes)
    eventually(lambda: health(cluster)["status"] == "ok", "the cluster is healthy again")


def _garbage_messages(rng: random.Random) -> list[list[bytes]]:
    """Frames that are ZeroMQ-valid but not our protocol, or our protocol with nonsense inside."""
    tag, submit, result = protocol.PROTOCOL, Command.SUBMIT.value, Command.RESULT.value
    messages: list[list[bytes]] = [
        [rng.randbytes(rng.randint(0, 64)) for _ in range(rng.randint(1, 6))] for _ in range(200)
    ]
    messages += [
        [b""],
        [tag],
        [tag, b"\xff", b"\x80"],  # unknown command
        [tag, submit, rng.randbytes(100)],  # header that is not msgpack
        [tag, submit, b"\x93\x01\x02\x03"],  # msgpack, but not a map
        protocol.encode(Command.SUBMIT, {"job": 1, "n": "x", "normalize": "yes", "timeout_ms": None}, b"\x90"),
        [tag, result, protocol.encode(Command.RESULT, {"job": "j", "n": 2, "dim": 3})[2], b"short"],
        [tag, submit, rng.randbytes(4 * 1024 * 1024)],  # a large frame of noise
        protocol.encode(Command.READY, {"model": 1, "dim": "x", "device": None, "capacity": -1}),
    ]
    return messages


def test_garbage_on_the_broker_sockets_is_dropped_and_the_broker_keeps_serving(cluster: Cluster,
                                                                                pool: TextPool) -> None:
    wait_workers(cluster, 1)
    pid = part_pid(cluster, "broker")
    listening = [e for e in cluster.events if e["type"] == "broker_listening"][-1]["data"]
    addresses = [listening["clients"], listening["workers"]]
    dropped = broker_counter(cluster, "dropped_frames")
    rng = random.Random(11)
    # raw bytes on the transport, no ZeroMQ handshake (and one after a valid-looking greeting)
    for address in addresses:
        path = address.removeprefix("ipc://")
        for noise in (rng.randbytes(4096), b"\xff" + b"\0" * 8 + b"\x7f\x03" + rng.randbytes(2048)):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
                raw.connect(path)
                raw.sendall(noise)
    # ZeroMQ messages full of nonsense, on both sockets
    context = zmq.Context()
    try:
        for address in addresses:
            dealer = context.socket(zmq.DEALER)
            dealer.setsockopt(zmq.LINGER, 10_000)  # close() must deliver what was sent, even on a busy machine
            dealer.connect(address)
            for frames in _garbage_messages(rng):
                dealer.send_multipart(frames)
            # a SUBMIT whose texts are not strings is answered, not dropped
            if address == listening["clients"]:
                dealer.send_multipart(protocol.encode(Command.SUBMIT, {"job": "bad", "n": 2, "normalize": True,
                                                                       "timeout_ms": 1000}, msgpack.packb([1, 2])))
                assert dealer.poll(30_000), "no answer to a SUBMIT of non-strings"
                reply = protocol.decode(dealer.recv_multipart())
                while reply.command is not Command.ERROR:
                    assert dealer.poll(30_000)
                    reply = protocol.decode(dealer.recv_multipart())
                assert reply.header["code"] == "BAD_REQUEST" and reply.header["job"] == "bad"
            dealer.close()
    finally:
        context.term()
    eventually(lambda: broker_counter(cluster, "dropped_frames") >= dropped + 400, "the garbage is counted")
    assert part_pid(cluster, "broker") == pid, "the broker restarted: garbage crashed it"
    with Load(cluster.url, pool, clients=8) as load:
        load.wait_answers(24)
    tally = check_outcomes(load.outcomes)
    assert tally["200"] == len(load.outcomes)


def test_a_flood_far_past_capacity_gets_fast_503s_in_bounded_memory_and_recovers(cluster: Cluster,
                                                                                 pool: TextPool) -> None:
    wait_workers(cluster, 1)
    front, broker = part_pid(cluster, "front"), part_pid(cluster, "broker")
    start_rss = {"front": rss_mib(front), "broker": rss_mib(broker)}
    peak = dict(start_rss)
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.1):
            peak["front"] = max(peak["front"], rss_mib(front))
            peak["broker"] = max(peak["broker"], rss_mib(broker))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:  # 48 clients with 64 texts each offer 5x the queue at once, and again as soon as they are answered
        with Load(cluster.url, pool, clients=48, sizes=(64,)) as load:
            load.wait_answers(600)
    finally:
        stop.set()
        sampler.join()
    tally = check_outcomes(load.outcomes, allowed={"OVERLOADED", "TIMEOUT"})
    overloaded = [o for o in load.outcomes if o.code == "OVERLOADED"]
    assert len(overloaded) > len(load.outcomes) / 2, tally
    assert all(o.status == 503 and o.retry_after for o in overloaded)
    # fast: refused without waiting for any compute (generous bound: the machine may be busy)
    assert statistics.median(o.done - o.sent for o in overloaded) < 2.0
    growth = {part: peak[part] - start_rss[part] for part in peak}
    print(f"flood: {dict(tally)}; median 503 in {statistics.median(o.done - o.sent for o in overloaded):.3f}s; "
          f"RSS MiB before {start_rss}, peak {peak}")
    assert growth["front"] < 150 and growth["broker"] < 100, (start_rss, peak)
    # and it recovers: the queue drains and a plain request is served
    eventually(lambda: health(cluster)["status"] == "ok", "healthy after the flood")
    outcome = post_embed(requests.Session(), cluster.url, pool.texts[:5], pool)
    assert outcome.status == 200 and outcome.cosine and outcome.cosine > 0.999


def raw_http(cluster: Cluster, data: bytes, read_timeout: float = 30.0, hang_up: bool = False) -> bytes:
    """Send raw bytes to the front and read until it closes the connection; ``hang_up``: close our side
    for writing right after the bytes (a client that dies in the middle of its body)."""
    with socket.create_connection(("127.0.0.1", cluster.port), timeout=read_timeout) as s:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # answered and closed mid-body
            s.sendall(data)
            if hang_up:
                s.shutdown(socket.SHUT_WR)
        chunks = []
        try:
            while chunk := s.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:
            pass
        return b"".join(chunks)


def status_and_code(response: bytes) -> tuple[int, str | None]:
    head, _, body = response.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    match = re.search(rb'"code":\s*"([A-Z_]+)"', body)
    return status, match.group(1).decode() if match else None


@pytest.mark.parametrize(
    ("request_bytes", "status", "code"),
    [
        pytest.param(b"POST /embed HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\nConnection: close\r\n\r\n" % (50 * MAX_BODY_BYTES), 413,
                     "PAYLOAD_TOO_LARGE",
                     id="content-length-over-the-limit-refused-before-the-body"),
        pytest.param(b"POST /embed HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n"
                     b"Connection: close\r\n\r\n"
                     + b"%x\r\n" % (MAX_BODY_BYTES // 4) + b"[" * (MAX_BODY_BYTES // 4) + b"\r\n"
                     + (b"%x\r\n" % (MAX_BODY_BYTES)) + b" " * MAX_BODY_BYTES + b"\r\n0\r\n\r\n",
                     413, "PAYLOAD_TOO_LARGE", id="chunked-body-over-the-limit"),
        pytest.param(b"GARBAGE\x00\xff /\r\n\r\n", 400, "BAD_REQUEST", id="garbage-request-line"),
        pytest.param(b"POST /embed HTTP/1.1\r\nHost: localhost\r\nContent-Length: nope\r\nConnection: close\r\n\r\n",
                     400, "BAD_REQUEST", id="bad-content-length"),
        pytest.param(b"POST /embed HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 10\r\nConnection: close\r\n\r\n"
                     b"\xff\xfe\x00{\x80\x81garb", 400, "INVALID_JSON", id="binary-body"),
    ],
)
def test_malformed_http_is_a_json_error_and_the_front_keeps_serving(cluster: Cluster, pool: TextPool,
                                                                    request_bytes: bytes, status: int,
                                                                    code: str) -> None:
    assert status_and_code(raw_http(cluster, request_bytes)) == (status, code)
    outcome = post_embed(requests.Session(), cluster.url, pool.texts[:3], pool)
    assert outcome.status == 200 and outcome.cosine and outcome.cosine > 0.999


def test_a_client_that_hangs_up_mid_body_is_forgotten(cluster: Cluster, pool: TextPool) -> None:
    head = b"POST /embed HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 5000\r\n\r\n"
    response = raw_http(cluster, head + b'{"texts": ["cut', hang_up=True)
    assert response == b"" or status_and_code(response)[0] == 400, response[:200]
    outcome = post_embed(requests.Session(), cluster.url, pool.texts[:3], pool)
    assert outcome.status == 200 and outcome.cosine and outcome.cosine > 0.999


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        pytest.param(b"[" * 100_000 + b"]" * 100_000, 400, "INVALID_JSON", id="nested-too-deep"),
        pytest.param(b'{"texts": ["\\ud800 lone surrogate"]}', 400, "BAD_REQUEST", id="lone-surrogate"),
        pytest.param(b'{"texts": ["ok"], "normalize": NaN}', 400, "BAD_REQUEST", id="nan"),
        pytest.param(b'{"texts": ["' + b"x" * (MAX_BODY_BYTES - 100) + b'"]}', 400, "BAD_REQUEST",
                     id="text-over-max-text-chars"),
        pytest.param(b'{"texts": [' + b'"a",' * 3000 + b'"a"]}', 400, "BAD_REQUEST", id="too-many-texts"),
        # RFC 8259 lets a parser ignore a UTF-8 byte order mark; the front does (json.loads reads it as utf-8-sig)
        pytest.param(b"\xef\xbb\xbf" + b'{"texts": ["bom"]}', 200, None, id="utf8-bom"),
        pytest.param(b'{"texts": ["a"]}' + b" " * 10 + b"trailing", 400, "INVALID_JSON", id="trailing-garbage"),
        pytest.param(b"", 400, "INVALID_JSON", id="empty-body"),
        pytest.param(b'{"texts": ["a"], "texts": "b"}', 400, "BAD_REQUEST", id="duplicate-key-last-wins"),
    ],
)
def test_malformed_json_bodies_are_4xx_json_errors(cluster: Cluster, pool: TextPool, body: bytes,
                                                   status: int, code: str | None) -> None:
    r = cluster.post("/embed", data=body, headers={"Content-Type": "application/json"})
    if code is None:  # accepted
        assert r.status_code == status and len(r.json()["vectors"]) == 1, r.text
    else:
        assert (r.status_code, r.json()["error"]["code"]) == (status, code), r.text
    assert r.headers["Content-Type"].startswith("application/json")
    outcome = post_embed(requests.Session(), cluster.url, pool.texts[:3], pool)
    assert outcome.status == 200 and outcome.cosine and outcome.cosine > 0.999
