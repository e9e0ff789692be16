"""What the front tells operators: Prometheus metrics, request ids and an access log.

- :class:`Metrics` holds the front's own counters and histograms (requests, texts, tokens, per-stage latency)
  in a registry of its own, plus a collector that reads the broker's latest status at scrape time (queue
  depth, workers by state, restarts, the workers' batch sizes), so nothing has to be pushed.
- :class:`RequestObservability` is a Falcon middleware: it takes ``X-Request-ID`` from the request (or makes
  one), echoes it, counts and times every request, and logs one access line that carries the id.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import time
from collections.abc import Iterator
from typing import Any

import falcon
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from http_front.broker_client import BrokerClient, EmbedResult

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-ID"
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:/+=@-]{1,128}$")  # what we echo and log as it came; else a new one
_ID_PREFIX = os.urandom(8).hex()  # a new id: this process's random prefix and a counter (unique, and cheap)
_ID_NUMBERS = itertools.count(1)


def new_request_id() -> str:
    return f"{_ID_PREFIX}{next(_ID_NUMBERS):016x}"  # 32 hex digits, as uuid4().hex

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    def __init__(self, client: BrokerClient) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("embed_http_requests", "HTTP requests by route, method and outcome "
                                "(OK or the error code)", ["route", "method", "code"], registry=r)
        self.request_seconds = Histogram("embed_http_request_duration_seconds", "HTTP request latency in the "
                                         "front, by route", ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.texts = Counter("embed_texts", "texts sent to the workers, by route and outcome (OK or the error "
                             "code)", ["route", "outcome"], registry=r)
        self.tokens = Counter("embed_tokens", "tokens embedded (the model's tokenizer, special tokens included)",
                              ["route"], registry=r)
        self.truncated = Counter("embed_truncated_texts", "texts cut at the model's token limit", ["route"],
                                 registry=r)
        self.stage_seconds = Histogram("embed_stage_seconds", "latency of embedding requests by stage: queue "
                                       "(waiting in the broker), encode (in the model), total (the front's round "
                                       "trip to the broker)", ["stage"], buckets=LATENCY_BUCKETS, registry=r)
        r.register(ClusterCollector(client))

    def observe_embed(self, route: str, texts: int, result: EmbedResult, seconds: float) -> None:
        self.texts.labels(route, "OK").inc(texts)
        self.tokens.labels(route).inc(result.tokens)
        if result.truncated:
            self.truncated.labels(route).inc(len(result.truncated))
        self.stage_seconds.labels("queue").observe(result.timings.get("queue_ms", 0.0) / 1000)
        self.stage_seconds.labels("encode").observe(result.timings.get("encode_ms", 0.0) / 1000)
        self.stage_seconds.labels("total").observe(seconds)

    def observe_embed_error(self, route: str, texts: int, code: str) -> None:
        self.texts.labels(route, code).inc(texts)

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """The metrics in the format the scraper accepts (Prometheus text, or OpenMetrics) and its type."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type


class ClusterCollector(Collector):
    """Metrics that the broker knows, read from its latest status whenever Prometheus scrapes."""

    def __init__(self, client: BrokerClient) -> None:
        self.client = client

    def collect(self) -> Iterator[Metric]:
        status = self.client.broker_status()
        yield GaugeMetricFamily("embed_broker_up", "1 when the front has a fresh status from the broker",
                                value=0 if status is None else 1)
        if status is None:
            return
        yield GaugeMetricFamily("embed_queue_texts", "texts waiting in the broker's queue",
                                value=status.queue_texts)
        yield GaugeMetricFamily("embed_queue_jobs", "jobs waiting in the broker's queue",
                                value=status.queue_jobs)
        workers = GaugeMetricFamily("embed_workers", "workers by state: ready and busy (registered), restarting "
                                    "and failed (local workers down, as the supervisor reports)", labels=["state"])
        states: dict[str, int] = {"ready": 0, "busy": 0, "restarting": 0, "failed": 0}
        for worker in [*status.workers, *status.workers_down]:
            state = str(worker.get("state"))
            states[state] = states.get(state, 0) + 1
        for state, count in sorted(states.items()):
            workers.add_metric([state], count)
        yield workers
        restarts = CounterMetricFamily("embed_worker_restarts", "times a worker id registered again from a new "
                                       "process (restarted by the supervisor or whoever runs it)", labels=["worker"])
        for worker_id, count in sorted(status.worker_restarts.items()):
            restarts.add_metric([str(worker_id)], count)
        yield restarts
        jobs = CounterMetricFamily("embed_broker_jobs", "the broker's job counters", labels=["event"])
        for event, count in sorted(status.counters.items()):
            jobs.add_metric([str(event)], count)
        yield jobs
        yield self._batch_sizes(status.worker_stats)

    @staticmethod
    def _batch_sizes(worker_stats: dict[str, Any]) -> Metric:
        family = HistogramMetricFamily("embed_batch_size_texts", "texts per batch the model encoded, by worker",
                                       labels=["worker"])
        for worker_id, stats in sorted(worker_stats.items()):
            sizes = stats.get("batch_sizes") if isinstance(stats, dict) else None
            if not isinstance(sizes, dict):
                continue
            bounds, counts = sizes.get("le") or [], sizes.get("counts") or []
            if len(counts) != len(bounds) + 1:
                continue
            cumulative, buckets = 0, []
            for bound, count in zip([*map(str, bounds), "+Inf"], counts, strict=True):
                cumulative += count
                buckets.append((bound, cumulative))
            family.add_metric([str(worker_id)], buckets, sum_value=sizes.get("sum", 0))
        return family


class RequestObservability:
    """Falcon middleware: request ids, the access log, and the per-request metrics."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        given = req.get_header(REQUEST_ID_HEADER)
        req.context.request_id = given if given and _REQUEST_ID.match(given) else new_request_id()
        req.context.started = time.perf_counter()

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource: object,
                         req_succeeded: bool) -> None:
        request_id = req.context.get("request_id") or new_request_id()
        resp.set_header(REQUEST_ID_HEADER, request_id)
        seconds = time.perf_counter() - req.context.get("started", time.perf_counter())
        route = req.uri_template or "unmatched"  # unmatched paths share one label: bounded cardinality
        code = outcome(resp)
        self.metrics.requests.labels(route, req.method, code).inc()
        self.metrics.request_seconds.labels(route).observe(seconds)
        log.info("%s %s -> %s %s in %.1f ms [request %s]", req.method, req.path, resp.status_code, code,
                 seconds * 1000, request_id)


def outcome(resp: falcon.Response) -> str:
    """The error's stable code; ``OK`` for a success; ``HTTP_<status>`` for another answer (/health's 503)."""
    media = resp.media if isinstance(resp.media, dict) else None
    error = media.get("error") if media else None
    if isinstance(error, dict) and isinstance(error.get("code"), str):
        return error["code"]
    return "OK" if resp.status_code < 400 else f"HTTP_{resp.status_code}"


class MetricsResource:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.data, resp.content_type = self.metrics.exposition(req.get_header("Accept"))
