"""waitress, with its own protocol-level errors (body over the limit, malformed HTTP) answered in our JSON
error shape instead of plain text, so that a client sees the same ``{"error": {"code", "message"}}``
whether the app or the server refused a request. A body whose Content-Length is over the limit is refused
before it is read.
"""

from __future__ import annotations

import json
from typing import Any

import waitress
from waitress import wasyncore
from waitress.channel import HTTPChannel
from waitress.task import ErrorTask

_CODES = {413: "PAYLOAD_TOO_LARGE", 431: "BAD_REQUEST", 400: "BAD_REQUEST", 500: "INTERNAL"}


class JsonErrorTask(ErrorTask):
    def execute(self) -> None:
        error = self.request.error
        code = _CODES.get(error.code, "BAD_REQUEST" if error.code < 500 else "INTERNAL")
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


def close_server(server: Any) -> None:
    """Stop listening and drop every connection, idle keep-alive ones included: waitress's loop runs while
    any connection is open, so closing the listener alone leaves a front with a keep-alive client running."""
    server.close()
    wasyncore.close_all(server._map, ignore_all=True)
