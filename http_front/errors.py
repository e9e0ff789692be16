"""How the front answers an error: the codes, statuses and Retry-After come from embed_common/errors.py.

Every error leaves the front as ``{"error": {"code": CODE, "message": ...}}``; messages never carry
exception text from inside the cluster.
"""

from __future__ import annotations

import logging
from typing import Any

import falcon

from embed_common.errors import code_for_status, spec

log = logging.getLogger(__name__)


OPENAI_PREFIX = "/v1/"  # routes under it answer errors in OpenAI's shape (http_front/openai_api.py)


class ApiError(Exception):
    """An error answered as JSON; ``code`` must be in the error table (a typo raises UnknownErrorCode here)."""

    def __init__(self, code: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.spec = spec(code)
        self.code = self.spec.code
        self.message = message
        self.details = details

    @classmethod
    def from_peer(cls, code: Any, message: Any, **details: Any) -> ApiError:
        """An error a broker or worker sent: a code this front does not know (a newer peer) is INTERNAL."""
        try:
            return cls(str(code), str(message), **details)
        except KeyError:
            log.warning("a peer sent the unknown error code %r: answering INTERNAL", code)
            return cls("INTERNAL", str(message), **details)

    @property
    def status(self) -> int:
        return self.spec.status

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, **self.details}}

    def openai_body(self) -> dict[str, Any]:
        """OpenAI's error shape: the same stable code, plus its ``type`` and ``param``."""
        details = {k: v for k, v in self.details.items() if k != "param"}
        return {"error": {"message": self.message, "type": self.spec.openai_type, "param": self.details.get("param"),
                          "code": self.code, **details}}


def _respond(req: falcon.Request, resp: falcon.Response, error: ApiError) -> None:
    resp.status = falcon.code_to_http_status(error.status)
    resp.media = error.openai_body() if req.path.startswith(OPENAI_PREFIX) else error.body()
    if error.spec.retry_after is not None:
        resp.set_header("Retry-After", str(error.spec.retry_after))
    if error.code == "UNAUTHORIZED":
        resp.set_header("WWW-Authenticate", 'Bearer realm="embed-cluster"')


def handle_api_error(req: falcon.Request, resp: falcon.Response, ex: ApiError, params: dict) -> None:
    _respond(req, resp, ex)


def handle_http_error(req: falcon.Request, resp: falcon.Response, ex: falcon.HTTPError, params: dict) -> None:
    code = code_for_status(ex.status_code)
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
