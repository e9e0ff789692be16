"""What the front's resources share: :class:`AppState` (the broker link, the limits, the metrics, the status
history, the PDF parsers and the drain switch for shutdown), and what they all say of the cluster
(:func:`cluster_summary`, :func:`readiness`, :func:`model_facts`)."""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import falcon

from embed_common import VERSION
from embed_common.protocol import DEFAULT_OPTIONS, JobOptions
from embed_common.settings import Limits
from embed_common.status import BrokerStatus
from http_front.broker_client import BrokerClient, EmbedResult
from http_front.embed_cache import CacheCollector, FrontCache
from http_front.errors import ApiError
from http_front.observability import Metrics
from http_front.pdf_text import PdfPool
from http_front.served_models import Served, served_models
from http_front.status_history import SAMPLE_INTERVAL, Counting, StatusHistory

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
    """What the resources share. ``counting``: which requests the status history counts (http_front/routes.py
    ``COUNTING``). ``pdf_parsers``: the processes that read PDFs (http_front/pdf_text.py); by default a pool of
    its own, started on the first PDF and stopped by :meth:`close` (one passed in is the caller's to close).
    ``history_interval``: seconds between the status history's samples."""

    def __init__(self, client: BrokerClient, limits: Limits, counting: Counting,
                 pdf_parsers: PdfPool | None = None, cache: FrontCache | None = None,
                 history_interval: float = SAMPLE_INTERVAL) -> None:
        self.client = client
        self.limits = limits
        self.cache = cache  # the vector cache (http_front/embed_cache.py); None: off
        self.metrics = Metrics(client)
        if cache is not None:
            self.metrics.registry.register(CacheCollector(cache))
        self.history = StatusHistory(client, counting, history_interval)  # the status page's ring buffers
        self.pdf_parsers = pdf_parsers or PdfPool()
        self.draining = False
        self.inflight = 0
        self.owned: list[Any] = [self.pdf_parsers] if pdf_parsers is None else []  # what close() stops
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

    def embed(self, route: str | None, texts: list[str], normalize: bool, options: JobOptions = DEFAULT_OPTIONS,
              timeout: float | None = None, job_chars: int | None = None, as_json: bool = False,
              model: Served | None = None, cache: bool = True) -> EmbedResult:
        """Every embedding route's way to the broker: counted in flight (for draining) and in the metrics, under
        ``route``, the request's URI template (``req.uri_template``; "unmatched" when None, as for every metric);
        through the vector cache unless ``cache`` is false (only its misses reach the broker).
        ``as_json``: the answer carries the rows as the workers wrote them (EmbedResult.vectors_json).
        ``model``: which (http_front/served_models.resolve); None: the default."""
        route = route or "unmatched"
        self.enter()
        started = time.perf_counter()
        alias = model.alias if model is not None else None

        def compute(batch: list[str]) -> EmbedResult:
            return self.client.embed(batch, normalize, timeout or self.limits.request_timeout, options,
                                     job_chars=job_chars, gone=CLIENT_GONE.get(), as_json=as_json, model=alias)

        try:
            if self.cache is not None and cache:
                result = self.cache.embed(texts, normalize, options, self.client.broker_status(), alias, compute)
            else:
                result = compute(texts)
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
        if self.cache is not None:
            self.cache.close()
        for closeable in self.owned:
            closeable.close()
        self.owned.clear()

    def drain(self, grace: float) -> bool:
        """Refuse new requests; wait up to ``grace`` seconds for those in flight. True if all finished."""
        with self._lock:
            self.draining = True
            return self.idle.wait_for(lambda: self.inflight == 0, timeout=grace)


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
        "models": [m.card() for m in served_models(status)],  # every model, the default first
    }


def readiness(state: AppState, status: BrokerStatus | None) -> str:
    """``ok`` when a worker can serve; else why not (the seed's /health ``status`` and /readyz's)."""
    if state.draining:
        return "shutting_down"
    if status is None:
        return "broker_unreachable" if state.client.heard_from_broker else "starting"
    if status.workers and all(m.workers for m in served_models(status)):
        return "ok"  # every model has a worker (one model: the seed's rule, any worker)
    return "no_workers" if status.ever_ready else "starting"


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
        # the least cosine of any worker's vectors to fp32 sentence-transformers' on its check (docs/engine.md)
        "cosine": min((w["cosine"] for w in workers if isinstance(w.get("cosine"), (int, float))), default=None),
        "max_tokens": status.max_tokens,
        "models": summary["models"],
        "version": VERSION,
        "cache": state.cache.stats() if state.cache is not None else None,
        "limits": {**asdict(state.limits), "max_queue_texts": status.max_queue_texts},
    }
