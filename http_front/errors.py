"""The front's error codes and the one table that maps them to HTTP statuses.

Every error leaves the front as ``{"error": {"code": CODE, "message": ...}}``; messages never carry
exception text from inside the cluster.
"""

from __future__ import annotations

import logging
from typing import Any

import falcon

log = logging.getLogger(__name__)

HTTP_STATUS: dict[str, int] = {
    "BAD_REQUEST": 400,
    "INVALID_JSON": 400,
    "UNAUTHORIZED": 401,
    "NOT_FOUND": 404,
    "MODEL_NOT_FOUND": 404,
    "METHOD_NOT_ALLOWED": 405,
    "PAYLOAD_TOO_LARGE": 413,
    "UNSUPPORTED_MEDIA_TYPE": 415,
    "INPUT_TOO_LONG": 422,
    "PDF_INVALID": 422,
    "PDF_ENCRYPTED": 422,
    "PDF_TOO_LARGE": 413,
    "INTERNAL": 500,
    "ENCODE_FAILED": 500,
    "WORKER_CRASHED": 500,
    "CLIENT_GONE": 499,  # the client closed its connection first: nobody reads this answer (nginx's 499)
    "NO_WORKERS": 503,
    "OVERLOADED": 503,
    "SHUTTING_DOWN": 503,
    "TIMEOUT": 504,
}

RETRY_AFTER: dict[str, int] = {"NO_WORKERS": 2, "OVERLOADED": 1, "SHUTTING_DOWN": 5}

OPENAI_PREFIX = "/v1/"  # routes under it answer errors in OpenAI's shape (http_front/openai_api.py)


class ApiError(Exception):
    def __init__(self, code: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.code = code if code in HTTP_STATUS else "INTERNAL"
        self.message = message
        self.details = details

    @property
    def status(self) -> int:
        return HTTP_STATUS[self.code]

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, **self.details}}

    def openai_body(self) -> dict[str, Any]:
        """OpenAI's error shape: the same stable code, plus its ``type`` and ``param``."""
        if self.status >= 500:
            kind = "server_error"
        elif self.status == 401:
            kind = "authentication_error"
        else:
            kind = "invalid_request_error"
        details = {k: v for k, v in self.details.items() if k != "param"}
        return {"error": {"message": self.message, "type": kind, "param": self.details.get("param"),
                          "code": self.code, **details}}


def _respond(req: falcon.Request, resp: falcon.Response, error: ApiError) -> None:
    resp.status = falcon.code_to_http_status(error.status)
    resp.media = error.openai_body() if req.path.startswith(OPENAI_PREFIX) else error.body()
    if error.code in RETRY_AFTER:
        resp.set_header("Retry-After", str(RETRY_AFTER[error.code]))
    if error.code == "UNAUTHORIZED":
        resp.set_header("WWW-Authenticate", 'Bearer realm="embed-cluster"')


def handle_api_error(req: falcon.Request, resp: falcon.Response, ex: ApiError, params: dict) -> None:
    _respond(req, resp, ex)


_FALCON_CODES = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED", 413: "PAYLOAD_TOO_LARGE",
                 415: "UNSUPPORTED_MEDIA_TYPE", 401: "UNAUTHORIZED"}


def handle_http_error(req: falcon.Request, resp: falcon.Response, ex: falcon.HTTPError, params: dict) -> None:
    code = _FALCON_CODES.get(ex.status_code, "BAD_REQUEST" if ex.status_code < 500 else "INTERNAL")
    error = ApiError(code, ex.title or code.lower())
    _respond(req, resp, error)
    resp.status = falcon.code_to_http_status(ex.status_code)
    for name, value in (ex.headers or {}).items():
        resp.set_header(name, value)


def handle_unexpected(req: falcon.Request, resp: falcon.Response, ex: Exception, params: dict) -> None:
    log.exception("unhandled error on %s %s [request %s]", req.method, req.path, req.context.get("request_id"))
    _respond(req, resp, ApiError("INTERNAL", "internal error; see the front's log"))


def install(app: falcon.App) -> None:
    # Falcon looks handlers up by the most specific type; HTTPError must not fall to the generic handler.
    app.add_error_handler(Exception, handle_unexpected)
    app.add_error_handler(falcon.HTTPError, handle_http_error)
    app.add_error_handler(ApiError, handle_api_error)
