"""waitress, with its own protocol-level errors (body over the limit, malformed HTTP) answered in our JSON
error shape instead of plain text, so that a client sees the same ``{"error": {"code", "message"}}``
whether the app or the server refused a request. A body whose Content-Length is over the limit is refused
before it is read.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import waitress
from waitress import wasyncore
from waitress.channel import HTTPChannel
from waitress.task import ErrorTask

from embed_common.errors import code_for_status


class JsonErrorTask(ErrorTask):
    def execute(self) -> None:
        error = self.request.error
        code = code_for_status(error.code)
        message = {"PAYLOAD_TOO_LARGE": "the request body is over the size limit"}.get(code, error.reason)
        body = json.dumps({"error": {"code": code, "message": f"{message}: {error.body}".rstrip(": ")}})
        self.status = f"{error.code} {error.reason}"
        self.response_headers.append(("Content-Type", "application/json"))
        self.set_close_on_finish()
        data = body.encode()
        self.content_length = len(data)
        self.write(data)


class JsonErrorChannel(HTTPChannel):
    error_task_class = JsonErrorTask


def make_server(app: Any, host: str, port: int, threads: int, max_body_bytes: int) -> Any:
    server = waitress.create_server(app, host=host, port=port, threads=threads, ident="embed-cluster",
                                    channel_timeout=120, max_request_body_size=max_body_bytes)
    server.channel_class = JsonErrorChannel
    return server


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
            if channel.requests or channel.total_outbufs_len:
                busy = True  # a request being served, or an answer not yet handed to the kernel
            else:
                channel.handle_close()  # idle, or half-received (never accepted): close it now
        if not busy:
            break
        wasyncore.loop(timeout=0.05, use_poll=use_poll, map=server._map, count=1)
    server.trigger.close()
    wasyncore.close_all(server._map, ignore_all=True)
