"""Which worker gets the next job: work in proportion to what each worker can do.

A worker's *rate* is the texts per second of compute it reports in its heartbeats (``stats.texts_per_s``) once
it has encoded ``MEASURED_AFTER`` texts; before that, the mean rate of the measured workers of its device kind
(two CPU workers of one model run at about the same speed, and a worker assumed far faster than its measured
twin would take every job until it had measured itself), or with none measured, a prior for its device.
Its *credit*, the texts it may hold at once, is what it encodes in ``WINDOW`` seconds: at least one full job,
at most the capacity it advertised. A job goes to the worker that would finish it first, the smallest
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

from embed_common.jobs import JOB_TEXTS

WINDOW = 1.0  # seconds of work a worker may hold
MEASURED_AFTER = 64  # texts a worker must have encoded before its own rate is trusted over the prior
MIN_CREDIT = JOB_TEXTS  # one full job (embed_common/jobs.py: the front's jobs hold at most this many texts)
PRIOR_RATE = {"cuda": 1000.0, "mps": 300.0, "cpu": 100.0}  # texts/s before a worker has measured itself


class Candidate(Protocol):
    capacity: int
    inflight_texts: int
    last_dispatch: float
    info: dict[str, Any]
    stats: dict[str, Any]


W = TypeVar("W", bound=Candidate)


def measured_rate(worker: Candidate) -> float | None:
    measured = worker.stats.get("texts_per_s")
    done = worker.stats.get("texts_done") or 0
    if isinstance(measured, (int, float)) and measured > 0 and done >= MEASURED_AFTER:
        return float(measured)
    return None


def device_kind(worker: Candidate) -> str:
    return str(worker.info.get("device") or "cpu").split(":", 1)[0]


def rate(worker: Candidate, peers: Iterable[Candidate] = ()) -> float:
    """Texts per second this worker encodes: measured when it has done enough, else the mean of its measured
    ``peers`` of the same device kind, else its device's prior."""
    measured = measured_rate(worker)
    if measured is not None:
        return measured
    kind = device_kind(worker)
    twins = [r for peer in peers if device_kind(peer) == kind and (r := measured_rate(peer)) is not None]
    if twins:
        return sum(twins) / len(twins)
    return PRIOR_RATE.get(kind, PRIOR_RATE["cpu"])


def credit(worker: Candidate, peers: Iterable[Candidate] = (), known_rate: float | None = None) -> int:
    """Texts the worker may hold at once: ``WINDOW`` seconds of its work, within [one job, its capacity]."""
    texts_per_s = rate(worker, peers) if known_rate is None else known_rate
    return max(1, min(worker.capacity, max(MIN_CREDIT, round(texts_per_s * WINDOW))))


def pick(candidates: Iterable[W], texts: int, backlog: int = 0) -> W | None:
    """The worker that should take a job of ``texts`` now, or None: the job waits in the queue.

    ``backlog`` is every text waiting in the queue, this job's included.
    """
    workers = list(candidates)
    if not workers:
        return None
    rates = {id(w): rate(w, workers) for w in workers}

    def finish(worker: W) -> float:  # seconds until this worker would have encoded the job given to it now
        return (worker.inflight_texts + texts) / rates[id(worker)]

    drain = (sum(w.inflight_texts for w in workers) + max(backlog, texts)) / sum(rates.values())
    limit = max(drain, min(finish(w) for w in workers))
    best: W | None = None
    best_key = (0.0, 0.0)
    for worker in workers:
        if worker.inflight_texts and worker.inflight_texts + texts > credit(worker, known_rate=rates[id(worker)]):
            continue  # out of credit
        key = (finish(worker), worker.last_dispatch)
        if key[0] <= limit and (best is None or key < best_key):
            best, best_key = worker, key
    return best
