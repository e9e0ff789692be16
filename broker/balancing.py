"""Which worker gets the next job: work in proportion to what each worker can do.

A worker's *rate* is the texts per second of compute it reports in its heartbeats (``stats.texts_per_s``) once
it has encoded ``MEASURED_AFTER`` texts; before that, a prior for its device. Its *credit*, the texts it may
hold at once, is what it encodes in ``WINDOW`` seconds: at least one full job, at most the capacity it
advertised. A job goes to the worker that would finish it first, the smallest
``(texts it holds + the job's) / rate``; when that worker is out of credit the job waits in the broker for it
instead of going to a worker that would finish it later. So under load every worker is kept busy at its own
speed (a GPU box gets ten times the texts of a CPU box that is ten times slower), and a slow box only gets a
job when it would finish it sooner than the fast one: it never becomes the tail of a request.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol, TypeVar

WINDOW = 1.0  # seconds of work a worker may hold
MEASURED_AFTER = 64  # texts a worker must have encoded before its own rate is trusted over the prior
MIN_CREDIT = 64  # one full job (the front splits requests into jobs of at most 64 texts)
PRIOR_RATE = {"cuda": 1000.0, "mps": 300.0, "cpu": 100.0}  # texts/s before a worker has measured itself


class Candidate(Protocol):
    capacity: int
    inflight_texts: int
    last_dispatch: float
    info: dict[str, Any]
    stats: dict[str, Any]


W = TypeVar("W", bound=Candidate)


def rate(worker: Candidate) -> float:
    """Texts per second this worker encodes: measured when it has done enough, else its device's prior."""
    measured = worker.stats.get("texts_per_s")
    done = worker.stats.get("texts_done") or 0
    if isinstance(measured, (int, float)) and measured > 0 and done >= MEASURED_AFTER:
        return float(measured)
    device = str(worker.info.get("device") or "cpu").split(":", 1)[0]
    return PRIOR_RATE.get(device, PRIOR_RATE["cpu"])


def credit(worker: Candidate) -> int:
    """Texts the worker may hold at once: ``WINDOW`` seconds of its work, within [one job, its capacity]."""
    return max(1, min(worker.capacity, max(MIN_CREDIT, round(rate(worker) * WINDOW))))


def finish_estimate(worker: Candidate, texts: int) -> float:
    """Seconds until this worker would have encoded a job of ``texts`` given to it now."""
    return (worker.inflight_texts + texts) / rate(worker)


def pick(candidates: Iterable[W], texts: int) -> W | None:
    """The worker that should take a job of ``texts`` now, or None: the job waits in the queue."""
    best: W | None = None
    best_key = (0.0, 0.0)
    for worker in candidates:
        key = (finish_estimate(worker, texts), worker.last_dispatch)
        if best is None or key < best_key:
            best, best_key = worker, key
    if best is None:
        return None
    if best.inflight_texts and best.inflight_texts + texts > credit(best):
        return None  # the fastest finisher is full: wait for it rather than hand the job to a slower one
    return best
