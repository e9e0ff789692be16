"""The status page's memory: what ``GET /status.json`` (http_front/status_page.py) shows of the last ten minutes.

- :class:`StatusHistory`: every ``interval`` seconds it reads the broker's latest STATUS (what
  :class:`~http_front.broker_client.BrokerClient` already polls) and the requests the front answered since the
  last sample, and appends one sample to ring buffers of fixed length (texts/s served, requests/s by outcome,
  queue depth, p50/p95 latency). It also derives the cluster's events (worker joined, lost, exited, restarted,
  crash loop, refused; broker restarted or unreachable) by diffing successive STATUS views, into a bounded
  ring: a broker restart is seen here, not by the broker, and nothing is lost when the broker restarts except
  its own list of refusals.
- A daemon thread samples while the front runs (:meth:`StatusHistory.start`); a request for the JSON also
  samples when one is due, so a history that nobody started (the unit tests') still advances.
- Which requests it counts is the route table's ``counted`` column (http_front/routes.py ``COUNTING``), handed
  in as a :class:`Counting`; :class:`StatusRecorder` is the Falcon middleware that feeds it each request.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import falcon

from embed_common.protocol import HEARTBEAT_INTERVAL, HEARTBEAT_LIVENESS
from embed_common.status import BrokerStatus
from http_front.broker_client import STATUS_MAX_AGE, BrokerClient

log = logging.getLogger(__name__)

SERIES = ("texts_per_s", "ok_per_s", "client_errors_per_s", "server_errors_per_s", "queue_texts", "p50_ms",
          "p95_ms")
LATENCY_SAMPLE = 4096  # latencies kept per interval (a uniform sample beyond that): bounded under any load
SAMPLE_INTERVAL = 1.0  # seconds between samples (the front's; a test passes a shorter one)
RATE_WINDOW = 5  # samples a worker's texts/s is averaged over: steadier than one interval's count


@dataclass(frozen=True)
class Counting:
    """Which requests the history counts, by URI template: ``latency`` ones in the rates and the latency
    percentiles (the routes that embed), ``uncounted`` ones not at all (the page watching itself), any other in
    the rates only."""

    latency: frozenset[str]
    uncounted: frozenset[str]


class StatusHistory:
    """Ring buffers of the last ``window`` seconds at one sample per ``interval``, and the cluster's events.

    ``clock`` is monotonic time (when a sample is due), ``wall`` the epoch time the samples and events carry.
    """

    def __init__(self, client: BrokerClient, counting: Counting, interval: float = SAMPLE_INTERVAL,
                 window: float = 600.0, max_events: int = 200, left_keep: float = 300.0,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time) -> None:
        self.client = client
        self.counting = counting
        self.interval = interval
        self.window = window
        self.left_keep = left_keep  # seconds a worker that left stays on the page, greyed
        self.clock, self.wall = clock, wall
        self.started_wall = wall()
        length = max(2, int(window / interval))
        self.samples: dict[str, deque[float | None]] = {name: deque(maxlen=length) for name in ("t", *SERIES)}
        self.events: deque[dict[str, Any]] = deque(maxlen=max_events)
        self._lock = threading.Lock()
        self._next_sample = clock()
        self._last_sample: float | None = None
        # requests answered since the last sample
        self._ok = self._client_errors = self._server_errors = 0
        self._latencies: list[float] = []
        self._latency_seen = 0
        # what the last STATUS view said, to diff the next one against
        self._broker_id: str | None = None
        self._broker_up: bool | None = None
        self._served: dict[str, tuple[Any, int]] = {}  # worker id -> (pid, served_texts) at the last sample
        self._rates: dict[str, deque[tuple[float, int]]] = {}  # worker id -> (seconds, texts) per interval
        self._known: dict[str, dict[str, Any]] = {}  # worker id -> its row as last seen (kept after it leaves)
        self._gone_at: dict[str, float] = {}  # worker id -> wall time it left registry and down list
        self._restarts: dict[str, int] = {}  # worker id -> the highest restart count either side reported
        self._down_seen: set[tuple[str, Any, str]] = set()  # (id, since, state) of the down reports seen
        self._refused_seen: set[tuple[Any, Any]] = set()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    # -- feeding it ----------------------------------------------------------------------------------------
    def observe_request(self, route: str, status_code: int, seconds: float) -> None:
        """One answered request (from :class:`StatusRecorder`); thread-safe, O(1)."""
        if route in self.counting.uncounted:
            return
        with self._lock:
            if status_code < 400:
                self._ok += 1
            elif status_code < 500:
                self._client_errors += 1
            else:
                self._server_errors += 1
            if route in self.counting.latency:
                self._latency_seen += 1
                if len(self._latencies) < LATENCY_SAMPLE:
                    self._latencies.append(seconds)
                else:  # reservoir sampling: every latency of the interval equally likely to be kept
                    slot = random.randrange(self._latency_seen)
                    if slot < LATENCY_SAMPLE:
                        self._latencies[slot] = seconds

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="status-sampler", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(max(0.05, self._next_sample - self.clock())):
            try:
                self.sample_if_due()
            except Exception:  # a bad STATUS must not end the history; the next sample tries again
                log.exception("status sample failed")

    def sample_if_due(self) -> bool:
        with self._lock:
            now = self.clock()
            if now < self._next_sample:
                return False
            self._next_sample = now + self.interval
            self._sample(now)
            return True

    # -- one sample (under the lock) -----------------------------------------------------------------------
    def _sample(self, now: float) -> None:
        wall = self.wall()
        seconds = self.interval if self._last_sample is None else max(1e-3, now - self._last_sample)
        self._last_sample = now
        status = self.client.broker_status()
        self._diff_broker(status, wall)
        texts = self._diff_workers(status, wall, seconds) if status is not None else 0
        latencies = sorted(self._latencies)
        row: dict[str, float | None] = {
            "t": round(wall, 3),
            "texts_per_s": round(texts / seconds, 2) if status is not None else None,
            "ok_per_s": round(self._ok / seconds, 2),
            "client_errors_per_s": round(self._client_errors / seconds, 2),
            "server_errors_per_s": round(self._server_errors / seconds, 2),
            "queue_texts": status.queue_texts if status is not None else None,
            "p50_ms": round(percentile(latencies, 0.50) * 1000, 2) if latencies else None,
            "p95_ms": round(percentile(latencies, 0.95) * 1000, 2) if latencies else None,
        }
        for name, value in row.items():
            self.samples[name].append(value)
        self._ok = self._client_errors = self._server_errors = self._latency_seen = 0
        self._latencies = []

    def _event(self, wall: float, kind: str, text: str, worker: str | None = None) -> None:
        self.events.append({"t": round(wall, 3), "kind": kind, "worker": worker, "text": text})

    def _diff_broker(self, status: BrokerStatus | None, wall: float) -> None:
        up = status is not None
        if self._broker_up is not None and up != self._broker_up:
            if up:
                self._event(wall, "broker_back", "the broker answers again")
            elif self.client.heard_from_broker:
                self._event(wall, "broker_unreachable", f"no status from the broker for {STATUS_MAX_AGE:g} s")
        self._broker_up = up
        if status is None:
            return
        broker_id = status.broker_id
        if self._broker_id is not None and broker_id != self._broker_id:
            self._event(wall, "broker_restarted", f"the broker restarted ({self._broker_id[:8]} -> "
                        f"{str(broker_id)[:8]}); jobs in flight were sent again")
            self._served.clear()  # its counts start again from zero
        self._broker_id = broker_id
        for refusal in status.refused:
            key = (refusal.get("at"), refusal.get("worker"))
            if key not in self._refused_seen:
                self._refused_seen.add(key)
                self._event(wall, "worker_refused", f"refused {refusal.get('worker')} from "
                            f"{refusal.get('host')}: {refusal.get('reason')}", str(refusal.get("worker")))
        if len(self._refused_seen) > 1000:  # the broker keeps a few; forget what it no longer lists
            self._refused_seen = {(r.get("at"), r.get("worker")) for r in status.refused}

    def _diff_workers(self, status: BrokerStatus, wall: float, seconds: float) -> int:
        """Update the rows and events from one STATUS view; the texts served since the last one."""
        serving = {str(w.get("id")): w for w in status.workers}
        down = {str(w.get("id")): w for w in status.workers_down}
        broker_restarts = status.worker_restarts
        texts = 0
        for worker_id, worker in serving.items():
            pid, served = worker.get("pid"), int(worker.get("served_texts") or 0)
            before = self._served.get(worker_id)
            count = broker_restarts.get(worker_id, 0)
            restarted = isinstance(count, int) and count > self._restarts.get(worker_id, 0)
            known = self._known.get(worker_id)
            if known is None:  # new to this front (which may have started after the worker's restarts)
                self._event(wall, "worker_joined", f"{worker_id} joined: {worker.get('device')} "
                            f"{worker.get('precision')} on {worker.get('host')}"
                            f"{' (remote)' if worker.get('remote') else ''}", worker_id)
            elif known["state"] not in ("ready", "busy") or restarted or known.get("pid") != pid:
                # back after a report of it down, or a new process between two samples (a quick restart)
                self._event(wall, "worker_restarted", f"{worker_id} is back (pid {pid}, restarts {count})",
                            worker_id)
            delta = served if before is None or before[0] != pid else max(0, served - before[1])
            self._served[worker_id] = (pid, served)
            texts += delta
            rates = self._rates.setdefault(worker_id, deque(maxlen=RATE_WINDOW))
            rates.append((seconds, delta))
            if isinstance(count, int):
                self._restarts[worker_id] = max(self._restarts.get(worker_id, 0), count)
            self._known[worker_id] = {**worker, "reason": None, "since": None}
            self._gone_at.pop(worker_id, None)
        for worker_id, report in down.items():
            if worker_id in serving:
                continue
            key = (worker_id, report.get("since"), str(report.get("state")))
            if key not in self._down_seen:
                self._down_seen.add(key)
                if report.get("state") == "failed":
                    self._event(wall, "worker_failed", f"{worker_id} failed: {report.get('reason')}"
                                f"{retry_text(report.get('restart_in'))}", worker_id)
                else:
                    self._event(wall, "worker_exited", f"{worker_id} {report.get('reason')}"
                                f"{retry_text(report.get('restart_in'))}", worker_id)
            restarts = report.get("restarts")
            if isinstance(restarts, int):
                self._restarts[worker_id] = max(self._restarts.get(worker_id, 0), restarts)
            self._known[worker_id] = {**self._known.get(worker_id, {}), **report, "id": worker_id,
                                      "credit": None, "inflight_texts": None}
            self._served.pop(worker_id, None)
            self._rates.pop(worker_id, None)
            self._gone_at.pop(worker_id, None)
        if len(self._down_seen) > 1000:
            self._down_seen = {(i, r.get("since"), str(r.get("state"))) for i, r in down.items()}
        for worker_id, row in list(self._known.items()):
            if worker_id in serving or worker_id in down:
                continue
            if row["state"] != "left":
                self._event(wall, "worker_lost", f"{worker_id} left the cluster (disconnected, or no heartbeat "
                            f"for {HEARTBEAT_INTERVAL * HEARTBEAT_LIVENESS:g} s)", worker_id)
                self._known[worker_id] = {**row, "state": "left", "reason": "left the cluster", "since": wall,
                                          "credit": None, "inflight_texts": None}
                self._gone_at[worker_id] = wall
                self._served.pop(worker_id, None)
                self._rates.pop(worker_id, None)
            elif wall - self._gone_at.get(worker_id, wall) > self.left_keep:
                del self._known[worker_id]
                self._gone_at.pop(worker_id, None)
        return texts

    # -- reading it ----------------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """The history, the events (newest first) and a row per worker, as ``/status.json`` sends them."""
        self.sample_if_due()
        with self._lock:
            history = {name: list(values) for name, values in self.samples.items()}
            events = list(reversed(self.events))
            workers = []
            for worker_id, row in sorted(self._known.items()):
                rates = self._rates.get(worker_id)
                spent = sum(s for s, _ in rates) if rates else 0.0
                workers.append({
                    "id": worker_id,
                    "state": row.get("state"),
                    "reason": row.get("reason"),
                    "host": row.get("host"),
                    "remote": row.get("remote"),
                    "device": row.get("device"),
                    "precision": row.get("precision"),
                    "backend": row.get("backend"),
                    "cosine": row.get("cosine"),
                    "pid": row.get("pid"),
                    "texts_per_s": round(sum(t for _, t in rates) / spent, 2) if rates and spent else None,
                    "speed": row.get("texts_per_s"),  # the worker's own measure of its compute rate
                    "served_texts": row.get("served_texts"),
                    "restarts": self._restarts.get(worker_id, 0),
                    "credit": row.get("credit"),
                    "inflight_texts": row.get("inflight_texts"),
                    "since": row.get("since"),
                })
        return {"interval": self.interval, "window": self.window, "history": history, "events": events,
                "workers": workers}


def retry_text(restart_in: Any) -> str:
    return f"; restarting in {restart_in:g} s" if isinstance(restart_in, int | float) else ""


def percentile(ordered: list[float], q: float) -> float:
    """The nearest-rank percentile of an ascending list (q in [0, 1])."""
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


class StatusRecorder:
    """Falcon middleware: each answered request's outcome and latency into the status history, under its
    route's URI template (``req.context.route``, set before routing by http_front/routes.py ``RouteLookup``, so
    that a request refused before routing, a 401, counts under its route too)."""

    def __init__(self, history: StatusHistory) -> None:
        self.history = history

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource: object,
                         req_succeeded: bool) -> None:
        started = req.context.get("started")  # set by RequestObservability, which runs before it
        route = req.context.get("route")
        if started is not None:
            self.history.observe_request(route.path if route is not None else "unmatched", resp.status_code,
                                         time.perf_counter() - started)
