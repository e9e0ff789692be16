"""THE error table: every stable error code, its HTTP status, whether it carries Retry-After, its OpenAI error
type and what it means. ``ErrorCode``, the front's status mapping, the OpenAPI descriptions and the README's
"Errors" table all come from (or are checked against) this one list; a code not in it is a programming error.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


@dataclass(frozen=True)
class ErrorSpec:
    code: str
    status: int
    description: str
    retry_after: int | None = None  # seconds a client should wait before retrying, when it should
    generic: bool = False  # the code a bare HTTP error of this status gets (falcon's or waitress's own)

    @property
    def openai_type(self) -> str:
        """OpenAI's ``error.type`` for this code."""
        if self.status >= 500:
            return "server_error"
        if self.status == 401:
            return "authentication_error"
        return "invalid_request_error"


TABLE: tuple[ErrorSpec, ...] = (
    ErrorSpec("INVALID_JSON", 400, "the body is not JSON"),
    ErrorSpec("BAD_REQUEST", 400, "`texts` missing or not a list of strings, `normalize`/`truncate` not a boolean, "
              "an unknown field, a limit exceeded", generic=True),
    ErrorSpec("UNAUTHORIZED", 401, "the server has an API key and the request did not carry it",
              generic=True),
    ErrorSpec("HOST_NOT_ALLOWED", 403, "the `Host` header names no host this front answers to (on a loopback "
              "bind: `localhost`, `127.0.0.1`, `[::1]`; and `--allowed-hosts`): a DNS-rebinding page"),
    ErrorSpec("ORIGIN_NOT_ALLOWED", 403, "a web page of an origin not in `--allowed-origins` sent the request "
              "(its `Origin` header)"),
    ErrorSpec("NOT_FOUND", 404, "no such route", generic=True),
    ErrorSpec("MODEL_NOT_FOUND", 404, "`/v1/...`: the request names a model this cluster does not serve"),
    ErrorSpec("METHOD_NOT_ALLOWED", 405, "the route does not take this method", generic=True),
    ErrorSpec("PAYLOAD_TOO_LARGE", 413, "body over `max_body_bytes` (refused before reading when Content-Length "
              "says so)", generic=True),
    ErrorSpec("PDF_TOO_LARGE", 413, "`/embed/pdf`: over `max_pdf_pages` or `pdf_timeout`, more text than "
              "`max_body_bytes` characters, or past a limit of the parser (a compression bomb)"),
    ErrorSpec("UNSUPPORTED_MEDIA_TYPE", 415, "the body's `Content-Type` is not what the route takes: "
              "`application/json` (or `+json`) for the JSON routes, `application/pdf` for `/embed/pdf`",
              generic=True),
    ErrorSpec("INPUT_TOO_LONG", 422, "an input over the model's token limit with `\"truncate\": false`"),
    ErrorSpec("PDF_INVALID", 422, "`/embed/pdf`: not a PDF, corrupt or truncated"),
    ErrorSpec("PDF_ENCRYPTED", 422, "`/embed/pdf`: the PDF needs a password"),
    ErrorSpec("INTERNAL", 500, "the front failed (its log says why)", generic=True),
    ErrorSpec("ENCODE_FAILED", 500, "the model failed on this input"),
    ErrorSpec("WORKER_CRASHED", 500, "this input killed two workers; it is not retried"),
    ErrorSpec("MODEL_MISMATCH", 500, "broker to worker only (never an HTTP answer): the worker serves another "
              "model than the cluster, so it is refused"),
    ErrorSpec("CLIENT_GONE", 499, "the client closed its connection before its answer (nginx's 499): its queued "
              "jobs are dropped; nobody reads this answer"),
    ErrorSpec("NO_WORKERS", 503, "no worker is alive", retry_after=2),
    ErrorSpec("OVERLOADED", 503, "the queue is full, or every HTTP request thread is busy and `http_queue` "
              "requests already wait for one", retry_after=1, generic=True),
    ErrorSpec("SHUTTING_DOWN", 503, "the cluster is stopping", retry_after=5),
    ErrorSpec("TIMEOUT", 504, "not done within `request_timeout`"),
)

ERRORS: dict[str, ErrorSpec] = {spec.code: spec for spec in TABLE}

# The codes as an enum (ErrorCode.OVERLOADED.value == "OVERLOADED"), made from the table.
ErrorCode = enum.Enum("ErrorCode", [(spec.code, spec.code) for spec in TABLE], type=str)  # type: ignore[misc]

_GENERIC = {spec.status: spec.code for spec in TABLE if spec.generic}


class UnknownErrorCode(KeyError):
    """A code that is not in the table: a typo in our code, caught where the error is made."""


def spec(code: str) -> ErrorSpec:
    try:
        return ERRORS[code]
    except KeyError:
        raise UnknownErrorCode(f"{code!r} is not an error code in embed_common/errors.py") from None


def code_for_status(status: int) -> str:
    """The code for a bare HTTP error of ``status`` (a router 404, a server-level 431...)."""
    return _GENERIC.get(status, "BAD_REQUEST" if status < 500 else "INTERNAL")

