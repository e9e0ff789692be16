"""Helpers of the fault-injection suite (tests/integration/test_faults_*.py): a pool of texts with their
reference vectors, a load of concurrent HTTP clients that records every request's fate, and the checks that
every accepted request got exactly one answer and every answered vector is right."""

from __future__ import annotations

import os
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import requests

from tests.conftest import Cluster, cosine_rows, eventually

CLIENT_TIMEOUT = 90.0  # well past the cluster's 30 s request deadline: a client that waits this long was hung

_WORDS = ("every accepted request gets exactly one answer while workers crash stall and restart "
          "der Broker verteilt die Arbeit auf alle Worker im Netz "
          "les vecteurs reviennent dans le bon ordre même après une panne "
          "la cola tiene un límite y responde 503 cuando está llena").split()


def short_texts(n: int, seed: int) -> list[str]:
    """Distinct short texts (cheap to embed on a CPU, so a load stays light)."""
    rng = random.Random(seed)
    return [f"{i}: " + " ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 14))) for i in range(n)]


class TextPool:
    """Texts a load draws from, with the reference model's vectors of each (computed once)."""

    def __init__(self, texts: list[str], reference_model: Any) -> None:
        self.texts = texts
        vectors = reference_model.encode(texts, normalize_embeddings=True, batch_size=64)
        self.expected = dict(zip(texts, np.asarray(vectors), strict=True))

    def worst_cosine(self, texts: list[str], vectors: Any) -> float:
        got = np.asarray(vectors, dtype=np.float64)
        if got.shape != (len(texts), len(next(iter(self.expected.values())))):
            return -1.0
        return float(cosine_rows(got, np.array([self.expected[t] for t in texts])).min())


@dataclass
class Outcome:
    """One request's fate: an HTTP answer (status, error code) or the client-side exception (lost/hung)."""

    client: int
    sent: float
    done: float
    size: int
    status: int | None = None
    code: str | None = None
    retry_after: str | None = None
    cosine: float | None = None  # worst cosine against the reference, for a 200
    exception: str | None = None


@dataclass
class Load:
    """``clients`` threads posting random slices of the pool to /embed until stopped; each keeps one
    keep-alive session, like a desktop app's HTTP agent."""

    url: str
    pool: TextPool
    clients: int = 16
    sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 66)  # 66: a request of two jobs
    pause: float = 0.0
    cache: bool = False  # through the clusters' vector cache (post_embed)
    outcomes: list[Outcome] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __enter__(self) -> Load:
        for i in range(self.clients):
            thread = threading.Thread(target=self._client, args=(i,), name=f"load-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> list[Outcome]:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=CLIENT_TIMEOUT + 30)
            assert not thread.is_alive(), "a load client is stuck past its own timeout"
        return self.outcomes

    def wait_answers(self, n: int, timeout: float = 120.0) -> None:
        """Block until ``n`` requests have been answered (any status); fail loudly on timeout."""
        eventually(lambda: len(self.outcomes) >= n,
                   lambda: f"{n} requests answered (only {len(self.outcomes)}: {summary(self.outcomes)})", timeout)

    def _client(self, index: int) -> None:
        rng = random.Random(index * 7919 + os.getpid())
        session = requests.Session()
        try:
            while not self._stop.is_set():
                texts = rng.sample(self.pool.texts, rng.choice(self.sizes))
                self._record(post_embed(session, self.url, texts, self.pool, index, cache=self.cache))
                if self.pause:
                    time.sleep(self.pause)
        finally:
            session.close()

    def _record(self, outcome: Outcome) -> None:
        with self._lock:
            self.outcomes.append(outcome)


def post_embed(session: requests.Session, url: str, texts: list[str], pool: TextPool, client: int = 0,
               timeout: float = CLIENT_TIMEOUT, cache: bool = False) -> Outcome:
    """One /embed request's outcome. It passes by the clusters' vector cache (on, as by default) unless
    ``cache``: the faults are the workers' and the broker's, and a request answered from the cache would never
    meet them (tests/integration/test_cache.py loads a cluster through its cache while its front is killed)."""
    sent = time.monotonic()
    try:
        r = session.post(url + "/embed", json={"texts": texts, "cache": cache}, timeout=timeout)
    except requests.RequestException as exc:
        return Outcome(client, sent, time.monotonic(), len(texts), exception=type(exc).__name__)
    outcome = Outcome(client, sent, time.monotonic(), len(texts), r.status_code,
                      retry_after=r.headers.get("Retry-After"))
    try:
        body = r.json()
    except ValueError:
        outcome.code = "NOT_JSON"
        return outcome
    if r.status_code == 200:
        outcome.cosine = pool.worst_cosine(texts, body.get("vectors"))
    else:
        outcome.code = (body.get("error") or {}).get("code")
    return outcome


def summary(outcomes: Iterable[Outcome]) -> dict[str, int]:
    return dict(Counter(o.exception or (f"{o.status} {o.code}" if o.code else str(o.status)) for o in outcomes))


def check_outcomes(outcomes: list[Outcome], allowed: Iterable[str] = (), min_ok: int = 1) -> Counter:
    """Every request got one HTTP answer (no exception, no client timeout); every 200 carries the right
    vectors (cosine > 0.999 with the reference model, in input order); every error is a JSON error with a
    code in ``allowed``. Returns the tally."""
    allowed = set(allowed)
    tally = Counter(o.exception or (f"{o.status} {o.code}" if o.code else str(o.status)) for o in outcomes)
    lost = [o for o in outcomes if o.exception]
    assert not lost, f"{len(lost)} requests got no HTTP answer: {summary(lost)}; all: {dict(tally)}"
    wrong = [o for o in outcomes if o.status == 200 and (o.cosine is None or o.cosine <= 0.999)]
    assert not wrong, f"{len(wrong)} answers carry wrong vectors (worst {min(o.cosine or -1 for o in wrong)})"
    refused = [o for o in outcomes if o.status != 200 and o.code not in allowed]
    assert not refused, f"unexpected errors: {summary(refused)}; all: {dict(tally)}"
    ok = sum(1 for o in outcomes if o.status == 200)
    assert ok >= min_ok, f"only {ok} requests succeeded: {dict(tally)}"
    return tally


def health(cluster: Cluster) -> dict[str, Any]:
    """/health, its ``workers`` those of the default model (the one the faults' load embeds with), so that the
    suites read the same with a second model loaded (tests/conftest.py ``TEST_SECOND_MODEL``)."""
    body = cluster.get("/health", timeout=30).json()
    models = body.get("models") or []
    if len(models) > 1:
        body["workers"] = [w for w in body.get("workers") or [] if w.get("model") == models[0].get("alias")]
    return body


def wait_workers(cluster: Cluster, n: int, timeout: float = 180.0) -> list[dict[str, Any]]:
    """Wait until ``n`` workers serve (registered with the broker); fail loudly when they do not."""
    def serving() -> list[dict[str, Any]] | None:
        try:
            workers = health(cluster).get("workers") or []
        except requests.RequestException:
            return None
        return workers if len(workers) >= n else None

    return eventually(serving, lambda: f"{n} workers serving\n{cluster.log()}", timeout, interval=0.2)


def busy_worker(cluster: Cluster, timeout: float = 60.0) -> dict[str, Any]:
    """A worker that holds jobs right now (it is in the middle of a batch)."""
    def busiest() -> dict[str, Any] | None:
        busy = [w for w in health(cluster).get("workers") or [] if w.get("inflight_texts", 0) > 0]
        return max(busy, key=lambda w: w["inflight_texts"]) if busy else None

    return eventually(busiest, "a worker got busy", timeout, interval=0.02)


def children_of(pid: int) -> dict[int, str]:
    """The live child processes of ``pid`` and their command lines (from /proc)."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            if ppid != pid:
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                found[int(entry)] = f.read().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError, IndexError):
            continue
    return found


def part_pid(cluster: Cluster, part: str) -> int:
    """The pid of the cluster's ``broker`` or ``front`` process."""
    for pid, cmdline in children_of(cluster.proc.pid).items():
        if f" supervisor.cli {part} " in cmdline:
            return pid
    pytest.fail(f"no {part} process under the supervisor {cluster.proc.pid}")


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def next_event(cluster: Cluster, event_type: str, where: Any = None, after: int = 0,
               timeout: float = 60.0) -> tuple[int, dict[str, Any]]:
    """The first event of this type at index >= ``after`` matching ``where``, and its index."""
    event = cluster.wait_event(event_type, where, timeout=timeout, after=after)
    return next(i for i in range(after, len(cluster.events)) if cluster.events[i] is event), event


def broker_counter(cluster: Cluster, name: str) -> float:
    """One of the broker's counters (submitted, requeued, late_replies, dropped_frames...), from /metrics."""
    text = cluster.get("/metrics", headers={"Accept": "text/plain"}).text
    match = re.search(rf'^embed_broker_jobs_total{{event="{name}"}} ([0-9.e+]+)$', text, re.M)
    assert match, f"no broker counter {name} in /metrics"
    return float(match.group(1))
