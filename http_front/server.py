"""waitress, hardened for hostile and heavy clients (docs/reliability.md):

- its own protocol-level errors (body over the limit, malformed HTTP) answered in our JSON error shape instead
  of plain text, so that a client sees the same ``{"error": {"code", "message"}}`` whether the app or the
  server refused a request. A body whose Content-Length is over the limit is refused before it is read;
- after such an error, a bounded *lingering close*: the answer is sent, the write side shut, and what the client
  still sends is read and dropped (up to LINGER_SECONDS and LINGER_BYTES) before the socket is closed, so that a
  client that sends its whole body before reading (urllib, requests, Node's http) reads the 413 instead of
  getting a connection reset;
- many connections: up to ``max_connections`` open at once (waitress's own limit, 100, locked everyone out
  when 100 sockets sat idle); as that is neared, the idle ones are closed, oldest first, and any connection
  idle for ``idle_timeout`` seconds is closed. Polling is ``poll()``, not ``select()``, which cannot watch
  descriptors past 1024;
- probes (the routes whose row in http_front/routes.py says ``threads="probe"``: ``/livez``, ``/readyz``,
  ``/health``, ``/metrics``, ``/status.json``) and the server's own error answers run on a small dispatcher of
  their own, so they never wait behind embed requests for one of
  the request threads;
- embed requests beyond what the front can hold (every request thread busy and ``max_queued`` requests already
  waiting for one) are answered ``503 OVERLOADED`` with ``Retry-After`` at once, not queued without bound;
- a client that closes its connection while its request runs is noticed (waitress reads one request ahead,
  ``channel_request_lookahead``, so it sees the EOF): ``environ["waitress.client_disconnected"]()`` turns
  true, and the app drops that request's queued jobs (http_front/state.py ``CLIENT_GONE``).
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from typing import Any

from waitress import wasyncore
from waitress.adjustments import Adjustments
from waitress.channel import HTTPChannel
from waitress.server import TcpWSGIServer
from waitress.task import ErrorTask, ThreadedTaskDispatcher
from waitress.utilities import Error

from embed_common.errors import code_for_status, spec
from http_front.routes import PROBE_PATHS

log = logging.getLogger(__name__)

PROBE_THREADS = 2  # probes are answered from cached state: a couple of threads keep up with any prober
LINGER_SECONDS = 5.0  # how long a refused client may go on sending before its connection is closed
LINGER_BYTES = 64 * 1024 * 1024  # and how much of it is read (and dropped) at most
SEND_CHUNK = 4 * 1024 * 1024  # bytes of an answer offered to one send() (python -m bench.head measures it)


class Overloaded(Error):
    code = 503
    reason = "Service Unavailable"


class JsonErrorTask(ErrorTask):
    def execute(self) -> None:
        error = self.request.error
        code = code_for_status(error.code)
        message = {"PAYLOAD_TOO_LARGE": "the request body is over the size limit"}.get(code, error.reason)
        body = json.dumps({"error": {"code": code, "message": f"{message}: {error.body}".rstrip(": ")}})
        self.status = f"{error.code} {error.reason}"
        self.response_headers.append(("Content-Type", "application/json"))
        retry_after = spec(code).retry_after
        if retry_after is not None:
            self.response_headers.append(("Retry-After", str(retry_after)))
        if not isinstance(error, Overloaded):  # its request was read whole: the connection can go on
            self.set_close_on_finish()
            self.channel.linger_on_close = True  # the client may still be sending the body we refused
        data = body.encode()
        self.content_length = len(data)
        self.write(data)


class FrontChannel(HTTPChannel):
    """waitress's channel with a lingering close after an error answer (see the module's docstring)."""

    error_task_class = JsonErrorTask
    linger_on_close = False  # set by an error task: close by lingering
    linger_until = 0.0  # monotonic deadline once lingering; 0 while not
    lingered_bytes = 0

    def __init__(self, server: Any, sock: socket.socket, addr: Any, adj: Adjustments, map: Any = None) -> None:
        super().__init__(server, sock, addr, adj, map)
        # waitress hands the socket one SO_SNDBUF (16 KiB) at a time, copying the rest of the buffer each time;
        # a vector answer is hundreds of KiB: offer it whole, the kernel takes what it can
        self.sendbuf_len = max(self.sendbuf_len, SEND_CHUNK)

    def handle_close(self) -> None:
        if self.linger_on_close and not self.linger_until and not self.total_outbufs_len and self.socket:
            try:
                self.socket.shutdown(socket.SHUT_WR)  # the answer is out; the client reads it, then EOF
            except OSError:
                pass
            else:
                self.linger_until = time.monotonic() + LINGER_SECONDS
                self.will_close = self.close_when_flushed = False
                # from now on the loop asks these of this channel (set on it alone: every other channel keeps
                # waitress's own, with no call of ours in between, since the loop asks each one every turn)
                self.readable, self.writable, self.handle_read = (  # type: ignore[method-assign]
                    self._linger_readable, self._linger_writable, self._linger_read)
                return
        super().handle_close()

    def _linger_readable(self) -> bool:
        if time.monotonic() < self.linger_until:
            return True
        HTTPChannel.handle_close(self)
        return False

    def _linger_writable(self) -> bool:
        return False

    def _linger_read(self) -> None:
        try:
            data = self.recv(self.adj.recv_bytes)  # b"" once the client is done: recv() closed us already
        except OSError:
            data = b""
        self.lingered_bytes += len(data)
        if (data and self.lingered_bytes > LINGER_BYTES) or (not data and self.socket):
            HTTPChannel.handle_close(self)

    @property
    def idle(self) -> bool:
        """No request being served and nothing left to send: closing it loses nothing but a socket."""
        return not self.requests and not self.total_outbufs_len


class FrontServer(TcpWSGIServer):
    channel_class = FrontChannel

    def __init__(self, app: Any, adj: Adjustments, max_connections: int, max_queued: int) -> None:
        dispatcher = ThreadedTaskDispatcher()
        dispatcher.set_thread_count(adj.threads)
        self.probe_dispatcher = ThreadedTaskDispatcher()
        self.probe_dispatcher.set_thread_count(PROBE_THREADS)
        self.max_connections = max_connections
        self.keep_open = max(1, max_connections - max(4, max_connections // 8))  # room for new connections
        self.max_queued = max_queued
        super().__init__(app, map={}, dispatcher=dispatcher, adj=adj, sockinfo=adj.listen[0])

    def add_task(self, channel: Any) -> None:
        """Route a channel's next request: probes and error answers to their own threads; an embed request to
        the request threads, or an OVERLOADED answer when they and their queue are full."""
        request = channel.requests[0] if channel.requests else None
        if request is None or request.error or (request.command in ("GET", "HEAD") and request.path in PROBE_PATHS):
            self.probe_dispatcher.add_task(channel)
            return
        if self.waiting() >= self.max_queued:
            request.error = Overloaded(f"{self.max_queued} requests already wait for one of the front's "
                                       f"{self.adj.threads} request threads; retry later")
            self.probe_dispatcher.add_task(channel)
            return
        self.task_dispatcher.add_task(channel)

    def waiting(self) -> int:
        """Requests queued for a request thread beyond those that an idle thread is about to take (read
        without the dispatcher's lock: an estimate is enough for a bound)."""
        d = self.task_dispatcher
        idle = len(d.threads) - d.stop_count - d.active_count
        return max(0, len(d.queue) - max(0, idle))

    def handle_accept(self) -> None:
        super().handle_accept()
        if len(self.active_channels) > self.keep_open:
            self.close_idle(len(self.active_channels) - self.keep_open)

    def close_idle(self, count: int) -> None:
        """Close up to ``count`` idle connections, those quiet longest first (on the I/O thread)."""
        idle = sorted((c for c in self.active_channels.values() if c.idle), key=lambda c: c.last_activity)
        for channel in idle[:count]:
            channel.handle_close()
        if len(idle) < count:
            log.warning("%d connections open, %d of them idle: no more to close", len(self.active_channels),
                        len(idle))

    def maintenance(self, now: float) -> None:
        """Close connections idle past ``channel_timeout`` now (waitress only marks them for closing, which
        a lingering channel never acts on)."""
        cutoff = now - self.adj.channel_timeout
        for channel in list(self.active_channels.values()):
            if channel.idle and channel.last_activity < cutoff:
                channel.handle_close()


def raise_open_files_limit(needed: int) -> None:
    """Let this process hold ``needed`` descriptors when the soft limit is lower and the hard one allows it."""
    try:
        import resource
    except ImportError:  # not on this platform
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError):
            log.warning("could not raise the open-files limit from %d to %d", soft, target)


def make_server(app: Any, host: str, port: int, threads: int, max_body_bytes: int, max_connections: int,
                idle_timeout: float, max_queued: int) -> FrontServer:
    """The server, bound and listening; raises OSError when ``host:port`` cannot be bound. The limits come from
    the front's Limits (embed_common/settings.py), which has their defaults."""
    raise_open_files_limit(max_connections + 256)
    adj = Adjustments(host=host, port=port, threads=threads, ident="embed-cluster",
                      max_request_body_size=max_body_bytes, channel_timeout=idle_timeout,
                      cleanup_interval=max(1, min(30, int(idle_timeout / 4))),
                      connection_limit=max_connections + 2,  # waitress counts its listening socket and trigger
                      asyncore_use_poll=True, channel_request_lookahead=1)
    return FrontServer(app, adj, max_connections, max_queued)


def serve(server: Any, closing: threading.Event, flush_timeout: float = 5.0) -> None:
    """waitress's loop until ``closing`` is set, then a graceful close, in this same thread (closing waitress's
    sockets from another thread races with its loop): stop listening, so new connections are refused; close
    idle connections at once (keep-alive ones included: waitress's own loop runs while any is open); let those
    with a request in progress finish and send their whole answer, for up to ``flush_timeout`` seconds; then
    drop what is left. The caller sets ``closing`` once no request is in the app any more (AppState.drain)."""
    use_poll = server.adj.asyncore_use_poll
    while not closing.is_set():
        wasyncore.loop(timeout=0.2, use_poll=use_poll, map=server._map, count=1)
    wasyncore.dispatcher.close(server)  # the listening socket only; task threads still pull the trigger
    deadline = time.monotonic() + flush_timeout
    while time.monotonic() < deadline:
        busy = False
        for channel in list(server.active_channels.values()):
            if not channel.idle:
                busy = True  # a request being served, or an answer not yet handed to the kernel
            else:
                HTTPChannel.handle_close(channel)  # idle, half-received or lingering: close it now
        if not busy:
            break
        wasyncore.loop(timeout=0.05, use_poll=use_poll, map=server._map, count=1)
    server.trigger.close()
    wasyncore.close_all(server._map, ignore_all=True)
