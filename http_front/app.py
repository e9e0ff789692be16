"""The Falcon app: the seed's /health, /embed and /info, served from the broker's workers.

``create_app(client, settings)`` is what tests call; http_front.main reads the environment and serves it.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import falcon
import orjson

from embed_common import VERSION
from embed_common.protocol import DEFAULT_OPTIONS, JobOptions
from embed_common.settings import Limits
from embed_common.status import BrokerStatus
from http_front import errors, json_media
from http_front.auth import ApiKeyAuth
from http_front.broker_client import BrokerClient, EmbedResult
from http_front.errors import ApiError
from http_front.observability import Metrics, MetricsResource, RequestObservability
from http_front.pdf_text import PdfPool
from http_front.status_page import StatusHistory, StatusRecorder

log = logging.getLogger(__name__)

# this request's "has the client closed its connection?" (waitress's environ["waitress.client_disconnected"]),
# set by ClientGoneCheck for the request thread; the embedding routes hand it to the broker client
CLIENT_GONE: contextvars.ContextVar[Callable[[], bool] | None] = contextvars.ContextVar("client_gone",
                                                                                         default=None)


class ClientGoneCheck:
    """Middleware: makes the server's disconnect check available to AppState.embed for this request."""

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        check = req.env.get("waitress.client_disconnected")
        CLIENT_GONE.set(check if callable(check) else None)

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource: object,
                         req_succeeded: bool) -> None:
        CLIENT_GONE.set(None)


class AppState:
    """What the resources share: the broker link, the limits, and the drain switch for shutdown."""

    def __init__(self, client: BrokerClient, limits: Limits) -> None:
        self.client = client
        self.limits = limits
        self.metrics = Metrics(client)
        self.history = StatusHistory(client)  # the status page's ring buffers (http_front/status_page.py)
        self.draining = False
        self.inflight = 0
        self.owned: list[Any] = []  # what create_app started for this state and close() stops (the PDF parsers)
        self._lock = threading.Lock()
        self.idle = threading.Condition(self._lock)

    def enter(self) -> None:
        with self._lock:
            if self.draining:
                raise ApiError("SHUTTING_DOWN", "the service is shutting down")
            self.inflight += 1

    def leave(self) -> None:
        with self._lock:
            self.inflight -= 1
            if self.inflight == 0:
                self.idle.notify_all()

    def embed(self, route: str, texts: list[str], normalize: bool, options: JobOptions = DEFAULT_OPTIONS,
              timeout: float | None = None, job_chars: int | None = None, as_json: bool = False) -> EmbedResult:
        """Every embedding route's way to the broker: counted in flight (for draining) and in the metrics.
        ``as_json``: the answer carries the rows as the workers wrote them (EmbedResult.vectors_json)."""
        self.enter()
        started = time.perf_counter()
        try:
            result = self.client.embed(texts, normalize, timeout or self.limits.request_timeout, options,
                                       job_chars=job_chars, gone=CLIENT_GONE.get(), as_json=as_json)
        except ApiError as exc:
            self.metrics.observe_embed_error(route, len(texts), exc.code)
            raise
        finally:
            self.leave()
        self.metrics.observe_embed(route, len(texts), result, time.perf_counter() - started)
        return result

    def close(self) -> None:
        """Stop what the app started for itself (the entry point calls it once the server is closed)."""
        self.history.close()
        for closeable in self.owned:
            closeable.close()
        self.owned.clear()

    def drain(self, grace: float) -> bool:
        """Refuse new requests; wait up to ``grace`` seconds for those in flight. True if all finished."""
        with self._lock:
            self.draining = True
            return self.idle.wait_for(lambda: self.inflight == 0, timeout=grace)


def read_json(req: falcon.Request, limits: Limits) -> Any:
    length = req.content_length
    if length is not None and length > limits.max_body_bytes:
        raise ApiError("PAYLOAD_TOO_LARGE", f"the body is {length} bytes; the limit is {limits.max_body_bytes}")
    body = req.bounded_stream.read(limits.max_body_bytes + 1)
    if len(body) > limits.max_body_bytes:
        raise ApiError("PAYLOAD_TOO_LARGE", f"the body is over the limit of {limits.max_body_bytes} bytes")
    try:
        return orjson.loads(body)  # the fast parser; what it refuses (NaN, huge ints, lone surrogates, deep
    except orjson.JSONDecodeError:  # nesting) the standard one reads or refuses with the right message
        pass
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ApiError("INVALID_JSON", "the body is not valid JSON") from None
    except RecursionError:  # json raises it, not ValueError, for arrays or objects nested thousands deep
        raise ApiError("INVALID_JSON", "the body is nested too deeply") from None


_SURROGATE = re.compile("[\ud800-\udfff]")


def check_texts(texts: Any, limits: Limits, field_name: str = "texts") -> list[str]:
    if not isinstance(texts, list):
        raise ApiError("BAD_REQUEST", f"'{field_name}' must be a list of strings")
    if len(texts) > limits.max_texts:
        raise ApiError("BAD_REQUEST", f"'{field_name}' holds {len(texts)} items; the limit is {limits.max_texts}")
    if all(type(t) is str for t in texts) and max(map(len, texts), default=0) <= limits.max_text_chars \
            and not _SURROGATE.search("".join(texts)):
        return texts  # the usual case, checked at once; else find the first bad text, to name it
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ApiError("BAD_REQUEST", f"'{field_name}[{i}]' is not a string")
        if len(text) > limits.max_text_chars:
            raise ApiError("BAD_REQUEST", f"'{field_name}[{i}]' has {len(text)} characters; "
                           f"the limit is {limits.max_text_chars}")
        if _SURROGATE.search(text):  # JSON allows a lone "\ud800"; UTF-8 (and so the wire) does not
            raise ApiError("BAD_REQUEST", f"'{field_name}[{i}]' holds a lone UTF-16 surrogate: not valid Unicode")
    return texts


def read_texts_request(req: falcon.Request, limits: Limits, fields: set[str]) -> tuple[dict[str, Any], list[str]]:
    """A JSON object with a checked ``texts`` list and no field outside ``fields``."""
    body = read_json(req, limits)
    if not isinstance(body, dict):
        raise ApiError("BAD_REQUEST", "the body must be a JSON object")
    unknown = sorted(set(body) - fields)
    if unknown:
        raise ApiError("BAD_REQUEST", f"unknown field(s): {', '.join(unknown)}")
    if "texts" not in body:
        raise ApiError("BAD_REQUEST", "'texts' is required")
    return body, check_texts(body["texts"], limits)


def flag(body: dict[str, Any], name: str, default: bool) -> bool:
    value = body.get(name, default)
    if not isinstance(value, bool):
        raise ApiError("BAD_REQUEST", f"'{name}' must be true or false")
    return value


def cluster_summary(status: BrokerStatus | None) -> dict[str, Any]:
    status = status or BrokerStatus()
    devices = sorted({str(w.get("device")) for w in status.workers})
    return {
        "model": status.model_name,
        "model_id": status.model,
        "dim": status.dim,
        "device": devices[0] if len(devices) == 1 else ",".join(devices) or None,
        "workers": status.workers,
        # local workers that exited and do not serve yet: restarting, or failed (crash loop, refused)
        "workers_down": status.workers_down,
    }


def readiness(state: AppState, status: BrokerStatus | None) -> str:
    """``ok`` when a worker can serve; else why not (the seed's /health ``status`` and /readyz's)."""
    if state.draining:
        return "shutting_down"
    if status is None:
        return "broker_unreachable" if state.client.heard_from_broker else "starting"
    if status.workers:
        return "ok"
    return "no_workers" if status.ever_ready else "starting"


class Health:
    def __init__(self, state: AppState) -> None:
        self.state = state

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        status = self.state.client.broker_status()
        state = readiness(self.state, status)
        resp.status = falcon.HTTP_200 if state == "ok" else falcon.HTTP_503
        resp.media = {"status": state, **cluster_summary(status)}


class Livez:
    """The front's process is up and serving HTTP; nothing else is checked."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"status": "alive"}


class Readyz:
    """200 when a worker can serve (what /health says, without the details)."""

    def __init__(self, state: AppState) -> None:
        self.state = state

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        state = readiness(self.state, self.state.client.broker_status())
        resp.status = falcon.HTTP_200 if state == "ok" else falcon.HTTP_503
        resp.media = {"status": state}


def model_facts(state: AppState, status: BrokerStatus | None) -> dict[str, Any]:
    """What /info and /status.json both say of the model, its workers' kinds and the limits."""
    status = status or BrokerStatus()
    summary = cluster_summary(status)
    workers = summary["workers"]
    return {
        "model_id": summary["model_id"],
        "model": summary["model"],
        "dim": summary["dim"],
        "precision": sorted({str(w.get("precision")) for w in workers}) or None,
        "backend": sorted({str(w.get("backend")) for w in workers}) or None,
        "max_tokens": status.max_tokens,
        "version": VERSION,
        "limits": {**asdict(state.limits), "max_queue_texts": status.max_queue_texts},
    }


class Info:
    def __init__(self, state: AppState) -> None:
        self.state = state

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        summary = cluster_summary(self.state.client.broker_status())
        resp.media = {**model_facts(self.state, self.state.client.broker_status()), "device": summary["device"],
                      "workers": summary["workers"]}


EMBED_FIELDS = {"texts", "normalize", "truncate"}


class Embed:
    def __init__(self, state: AppState) -> None:
        self.state = state

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        limits = self.state.limits
        body, texts = read_texts_request(req, limits, EMBED_FIELDS)
        normalize = flag(body, "normalize", True)
        truncate = flag(body, "truncate", True)
        if not texts:
            resp.media = {"vectors": []}
            return
        result = self.state.embed("/embed", texts, normalize, JobOptions(truncate=truncate), as_json=True)
        extra = {"truncated": result.truncated} if result.truncated else {}  # only when any, as the seed's
        json_media.answer(resp, extra, "vectors", result.vectors_json())  # the rows as the workers wrote them


def create_app(client: BrokerClient, limits: Limits | None = None, state: AppState | None = None,
               api_key: str | None = None, pdf_parsers: PdfPool | None = None) -> falcon.App:
    """The app; pass ``state`` to keep a handle on it (the entry point drains it on shutdown). With ``api_key``
    every request but the probes needs it (http_front/auth.py). ``pdf_parsers``: the processes that read PDFs
    (http_front/pdf_text.py); by default a pool of its own, started on the first PDF."""
    from http_front import documents, openai_api, openapi, status_page  # they build on this module's helpers

    state = state or AppState(client, limits or Limits())
    middleware: list[Any] = [json_media.StreamLargeBodies(), RequestObservability(state.metrics),
                             StatusRecorder(state.history), ClientGoneCheck()]
    if api_key:
        middleware.append(ApiKeyAuth(api_key))
    app = falcon.App(cors_enable=False, middleware=middleware)
    app.req_options.strip_url_path_trailing_slash = True
    json_media.install(app)
    errors.install(app)
    app.add_route("/health", Health(state))
    app.add_route("/info", Info(state))
    app.add_route("/embed", Embed(state))
    app.add_route("/livez", Livez())
    app.add_route("/readyz", Readyz(state))
    app.add_route("/metrics", MetricsResource(state.metrics))
    app.add_route("/openapi.json", openapi.OpenApiSpec(state))
    openai_api.register(app, state)
    parsers = documents.register(app, state, pdf_parsers)
    if pdf_parsers is None:  # a pool of its own: closed with the state (one passed in is the caller's)
        state.owned.append(parsers)
    status_page.register(app, state)
    return app
