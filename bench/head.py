"""Head-node benchmark: how many requests and texts a second one front + one broker can route, and what CPU
each costs them, with N zero-cost workers (``python -m worker.fake``) in their own processes over the real ipc
sockets and a Python load generator (keep-alive connections, one thread each) on the same machine.

    python -m bench.head [--workers 1 4 16] [--seconds 5] [--connections 16] [--tree DIR ...] [--rounds R]

For each N and request shape (1 text, 64 texts) it prints requests/s, texts/s, and the CPU milliseconds the
front and the broker used per request and per text (from /proc/PID/stat). ``--tree DIR ...`` runs these
checkouts' fronts and brokers (e.g. an older commit's beside this one, for a before/after in one run) in turn,
``--rounds`` times each, so that the machine's drift is shared; worker/fake.py is copied into a tree that lacks
one. ``--floor`` adds waitress itself answering a fixed body with no app: the least CPU a request costs it.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench import procs

ROOT = Path(__file__).resolve().parent.parent
SHAPES = {"1-text": 1, "64-text": 64}


class Head:
    """A broker, a front and N fake workers from ``tree``; stopped by :meth:`close`."""

    def __init__(self, tree: Path, workers: int, logs: Path) -> None:
        self.rundir = Path(tempfile.mkdtemp(prefix="head-"))
        clients, worker_address = f"ipc://{self.rundir}/c.ipc", f"ipc://{self.rundir}/w.ipc"
        self.port = procs.free_port()
        env = {**procs.child_env(), "PYTHONPATH": str(tree)}
        self.procs: list[subprocess.Popen] = []

        def start(name: str, *argv: str) -> subprocess.Popen:
            log = open(logs / f"{name}.log", "w")  # noqa: SIM115 - the child holds it
            proc = subprocess.Popen([sys.executable, *argv], cwd=tree, env=env, stdout=subprocess.DEVNULL,
                                    stderr=log, stdin=subprocess.DEVNULL)
            self.procs.append(proc)
            return proc

        cli = ("-m", "supervisor.cli")
        self.broker = start("broker", *cli, "broker", "--clients", clients, "--workers-address", worker_address,
                            "--log-level", "WARNING")
        self.front = start("front", *cli, "front", "--broker", clients, "--port", str(self.port),
                           "--log-level", "WARNING")
        for i in range(workers):
            start(f"worker-{i}", "-m", "worker.fake", "--broker", worker_address, "--worker-id", f"fake-{i}")
        self.wait_workers(workers)

    def wait_workers(self, count: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                    if len(json.load(r).get("workers") or []) == count:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{count} workers did not register within {timeout:.0f} s")

    def close(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(self.rundir, ignore_errors=True)


def load(port: int, texts: int, seconds: float, connections: int) -> tuple[int, int]:
    """(requests answered 200, errors) from ``connections`` keep-alive clients for ``seconds``."""
    body = json.dumps({"texts": [f"text number {i} of a short request" for i in range(texts)]}).encode()
    stop = time.monotonic() + seconds
    done = [0] * connections
    errors = [0] * connections

    def client(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while time.monotonic() < stop:
            conn.request("POST", "/embed", body, {"Content-Type": "application/json"})
            reply = conn.getresponse()
            reply.read()
            if reply.status == 200:
                done[k] += 1
            else:
                errors[k] += 1
        conn.close()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done), sum(errors)


def measure(head: Head, texts: int, seconds: float, connections: int) -> dict[str, Any]:
    load(head.port, texts, min(1.0, seconds), connections)  # warm up
    before = procs.cpu_seconds(head.front.pid), procs.cpu_seconds(head.broker.pid)
    started = time.monotonic()
    requests, errors = load(head.port, texts, seconds, connections)
    wall = time.monotonic() - started
    front, broker = (procs.cpu_seconds(p.pid) - b for p, b in zip((head.front, head.broker), before, strict=True))
    n = max(requests, 1)
    return {"requests_per_s": round(requests / wall, 1), "texts_per_s": round(requests * texts / wall, 1),
            "errors": errors,
            "front_ms_per_request": round(front * 1000 / n, 3), "broker_ms_per_request": round(broker * 1000 / n, 3),
            "front_ms_per_text": round(front * 1000 / (n * texts), 4),
            "broker_ms_per_text": round(broker * 1000 / (n * texts), 4)}


FLOOR_APP = """
import sys, waitress
def app(environ, start_response):
    environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", "2")])
    return [b"{}"]
waitress.serve(app, host="127.0.0.1", port=int(sys.argv[1]), threads=8, _quiet=True)
"""


def floor(seconds: float, connections: int) -> dict[str, Any]:
    """waitress alone (no Falcon, no broker) answering 1-text requests: the least CPU a request costs the front."""
    port = procs.free_port()
    server = subprocess.Popen([sys.executable, "-c", FLOOR_APP, str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        procs.wait_healthy(port, 30, interval=0.1)  # it answers any path, /health too
        load(port, 1, min(1.0, seconds), connections)
        before = procs.cpu_seconds(server.pid)
        started = time.monotonic()
        requests, errors = load(port, 1, seconds, connections)
        wall, cpu = time.monotonic() - started, procs.cpu_seconds(server.pid) - before
        return {"requests_per_s": round(requests / wall, 1), "server_ms_per_request": round(cpu * 1000 / requests, 3),
                "errors": errors}
    finally:
        server.terminate()
        server.wait(10)


def print_means(results: list[dict[str, Any]], trees: list[Path]) -> None:
    """The mean of each figure over the rounds, a row per tree, N and shape."""
    print("means over the rounds:")
    groups: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault((r["tree"], r["workers"], r["shape"]), []).append(r)
    for (tree, workers, shape), rows in groups.items():
        mean = {name: round(statistics.fmean(r[name] for r in rows), 4) for name in rows[0]
                if name not in ("tree", "workers", "shape")}
        print(f"{trees.index(Path(tree)):>4} {workers:>7} {shape:>8} {mean['requests_per_s']:>8.1f} "
              f"{mean['texts_per_s']:>9.1f} {mean['front_ms_per_request']:>12.3f} "
              f"{mean['broker_ms_per_request']:>13.3f} {mean['front_ms_per_text']:>13.4f} "
              f"{mean['broker_ms_per_text']:>14.4f} {mean['errors']:>6.0f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--tree", type=Path, nargs="+", default=[ROOT], help="checkouts whose front and broker to run")
    parser.add_argument("--rounds", type=int, default=1, help="times each tree is measured, in turn")
    parser.add_argument("--floor", action="store_true", help="also measure waitress alone")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    trees = [tree.resolve() for tree in args.tree]
    for tree in trees:
        if not (tree / "worker" / "fake.py").exists():
            shutil.copy(ROOT / "worker" / "fake.py", tree / "worker" / "fake.py")
    logs = Path(tempfile.mkdtemp(prefix="head-logs-"))
    results = []
    print(f"{os.cpu_count()} CPUs; {args.seconds:.0f} s a shape, {args.connections} connections; trees:")
    for i, tree in enumerate(trees):
        print(f"  [{i}] {tree}")
    print(f"{'tree':>4} {'workers':>7} {'shape':>8} {'req/s':>8} {'texts/s':>9} {'front ms/req':>12} "
          f"{'broker ms/req':>13} {'front ms/text':>13} {'broker ms/text':>14} {'errors':>6}")
    for workers in args.workers:
        for _ in range(args.rounds):
            for i, tree in enumerate(trees):
                head = Head(tree, workers, logs)
                try:
                    for shape, texts in SHAPES.items():
                        r = {"tree": str(tree), "workers": workers, "shape": shape,
                             **measure(head, texts, args.seconds, args.connections)}
                        results.append(r)
                        print(f"{i:>4} {workers:>7} {shape:>8} {r['requests_per_s']:>8} {r['texts_per_s']:>9} "
                              f"{r['front_ms_per_request']:>12} {r['broker_ms_per_request']:>13} "
                              f"{r['front_ms_per_text']:>13} {r['broker_ms_per_text']:>14} {r['errors']:>6}",
                              flush=True)
                finally:
                    head.close()
    if args.rounds > 1:
        print_means(results, trees)
    if args.floor:
        r = {"tree": "waitress alone", "shape": "1-text", **floor(args.seconds, args.connections)}
        results.append(r)
        print(f"waitress alone, 1-text: {r['requests_per_s']} req/s, {r['server_ms_per_request']} ms CPU a request")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
