"""Which worker gets the next job: work in proportion to what each worker can do.

A worker's *rate* is the texts per second of compute it reports in its heartbeats (``stats.texts_per_s``) once
it has encoded ``MEASURED_AFTER`` texts; before that, a prior for its device. Its *credit*, the texts it may
hold at once, is what it encodes in ``WINDOW`` seconds: at least one full job, at most the capacity it
advertised. A job goes to the worker that would finish it first, the smallest
``(texts it holds + the job's) / rate``, if that worker has credit left. If it has none, the job goes to
another worker with credit only when that one would finish it before the workers together could drain all the
work there is (held and queued); otherwise it waits in the broker for the fast worker. So under load every
worker is kept busy at its own speed (a GPU box gets ten times the texts of a CPU box that is ten times
slower, and a worker whose rate was underestimated still gets jobs and is measured again), while near the end
of the work, or under light load, a slow box gets no job it would still be encoding after the others are done:
it never becomes the tail of a request.
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


def pick(candidates: Iterable[W], texts: int, backlog: int = 0) -> W | None:
    """The worker that should take a job of ``texts`` now, or None: the job waits in the queue.

    ``backlog`` is every text waiting in the queue, this job's included.
    """
    workers = list(candidates)
    if not workers:
        return None
    drain = (sum(w.inflight_texts for w in workers) + max(backlog, texts)) / sum(rate(w) for w in workers)
    limit = max(drain, min(finish_estimate(w, texts) for w in workers))
    best: W | None = None
    best_key = (0.0, 0.0)
    for worker in workers:
        if worker.inflight_texts and worker.inflight_texts + texts > credit(worker):
            continue  # out of credit
        key = (finish_estimate(worker, texts), worker.last_dispatch)
        if key[0] <= limit and (best is None or key < best_key):
            best, best_key = worker, key
    return best
