"""The front's waitress server in process (http_front/server.py), over real sockets on a free port, with a
small WSGI app whose POST blocks until released: probes are answered while every request thread is held, a
request past the queue gets 503 OVERLOADED at once, idle connections make room for new ones, and an
over-limit body is refused with its JSON even when the client sends it whole before reading."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from http_front.server import FrontServer, make_server, serve
from tests.conftest import eventually

RELEASE_TIMEOUT = 20.0


class App:
    """GET answers at once; POST waits for ``release`` (a held request thread)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Semaphore(0)

    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        if environ["REQUEST_METHOD"] == "POST":
            environ["wsgi.input"].read()
            self.entered.release()
            self.release.wait(RELEASE_TIMEOUT)
        start_response("200 OK", [("Content-Type", "application/json")])
        return [b'{"ok": true}']


@pytest.fixture
def listening() -> Iterator[tuple[FrontServer, App]]:
    app = App()
    server = make_server(app, "127.0.0.1", 0, threads=2, max_body_bytes=1024, max_connections=16,
                         idle_timeout=30.0, max_queued=1)
    closing = threading.Event()
    thread = threading.Thread(target=serve, args=(server, closing), daemon=True)
    thread.start()
    try:
        yield server, app
    finally:
        app.release.set()
        closing.set()
        thread.join(timeout=10)


def request(server: FrontServer, method: str, path: str, body: bytes | None = None,
            timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.effective_port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        conn.close()


def in_background(server: FrontServer, method: str, path: str) -> threading.Thread:
    thread = threading.Thread(target=request, args=(server, method, path, b"{}", 30.0), daemon=True)
    thread.start()
    return thread


def test_probes_answer_and_a_request_past_the_queue_is_refused_while_every_thread_is_held(listening: Any) -> None:
    server, app = listening
    held = [in_background(server, "POST", "/embed") for _ in range(2)]  # both request threads
    for _ in held:
        assert app.entered.acquire(timeout=10)
    queued = in_background(server, "POST", "/embed")  # waits for a thread: the queue holds one
    eventually(lambda: server.waiting() >= 1, "the third request queued", timeout=10, interval=0.01)
    assert server.waiting() == 1
    for path in ("/livez", "/readyz", "/health", "/metrics"):
        started = time.monotonic()
        status, _, _ = request(server, "GET", path)
        assert status == 200 and time.monotonic() - started < 1.0, path
    started = time.monotonic()
    status, headers, body = request(server, "POST", "/embed", b"{}")
    assert status == 503 and time.monotonic() - started < 1.0
    assert json.loads(body)["error"]["code"] == "OVERLOADED" and headers["Retry-After"] == "1"
    app.release.set()
    for thread in [*held, queued]:
        thread.join(timeout=10)
        assert not thread.is_alive()


def test_idle_connections_make_room_oldest_first(listening: Any) -> None:
    server, _ = listening
    idle = [socket.create_connection(("127.0.0.1", server.effective_port), timeout=5) for _ in range(40)]
    try:
        status, _, _ = request(server, "GET", "/health")  # 40 idle sockets against a bound of 16
        assert status == 200
        idle[0].settimeout(2)
        assert idle[0].recv(1) == b"", "the oldest idle connection is still open"
        idle[-1].settimeout(0.2)
        with pytest.raises(TimeoutError):
            idle[-1].recv(1)
    finally:
        for s in idle:
            s.close()


def test_an_over_limit_body_sent_whole_before_reading_gets_the_413_json(listening: Any) -> None:
    server, _ = listening
    body = b"x" * (4 * 1024 * 1024)  # far past the limit and the socket buffers
    with socket.create_connection(("127.0.0.1", server.effective_port), timeout=10) as s:
        s.sendall(b"POST /embed HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n" % len(body) + body)  # all of it, then read
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413")
    assert json.loads(payload)["error"]["code"] == "PAYLOAD_TOO_LARGE"
