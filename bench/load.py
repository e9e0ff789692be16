"""Load shapes against an ``/embed`` server: client threads on keep-alive ``http.client`` connections.

A shape cuts the texts into requests (``sizes``), and ``clients`` threads send them back to back, each
taking the next request when its previous one is answered. Every answer is parsed and checked (one vector
per text), and the vectors are kept in input order so that they can be compared with the reference's.
"""

from __future__ import annotations

import http.client
import json
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np


class LoadError(RuntimeError):
    pass


@dataclass(frozen=True)
class Api:
    """How a server is asked for vectors: the route, the request body for some texts, the vectors in its answer."""

    path: str
    request: Callable[[list[str]], dict]
    vectors: Callable[[dict], list[list[float]]]


EMBED = Api("/embed", lambda texts: {"texts": texts}, lambda answer: answer["vectors"])
# OpenAI's embeddings route without the /v1 prefix, as infinity-emb serves it (bench/infinity.py)
OPENAI = Api("/embeddings", lambda texts: {"input": texts, "model": "bench"},
             lambda answer: [row["embedding"] for row in sorted(answer["data"], key=lambda row: row["index"])])


class Client:
    """One keep-alive HTTP connection."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 300.0, api: Api = EMBED) -> None:
        self.conn = http.client.HTTPConnection(host, port, timeout=timeout)
        self.api = api

    def embed(self, texts: list[str]) -> tuple[float, list[list[float]]]:
        """(seconds until the whole answer arrived, vectors)."""
        body = json.dumps(self.api.request(texts)).encode()
        start = time.perf_counter()
        self.conn.request("POST", self.api.path, body, {"Content-Type": "application/json"})
        response = self.conn.getresponse()
        data = response.read()
        seconds = time.perf_counter() - start
        if response.status != 200:
            raise LoadError(f"HTTP {response.status}: {data[:300]!r}")
        vectors = self.api.vectors(json.loads(data))
        if len(vectors) != len(texts):
            raise LoadError(f"{len(vectors)} vectors for {len(texts)} texts")
        return seconds, vectors

    def close(self) -> None:
        self.conn.close()


@dataclass
class ShapeResult:
    name: str
    texts: int
    requests: int
    seconds: float
    latencies_ms: list[float]
    vectors: np.ndarray = field(repr=False)

    @property
    def texts_per_s(self) -> float:
        return self.texts / self.seconds

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q))


@dataclass(frozen=True)
class Shape:
    name: str
    clients: int
    min_texts: int
    max_texts: int

    def cut(self, n: int, seed: int = 0) -> list[tuple[int, int]]:
        """(start, count) of each request over ``n`` texts, in order."""
        rng = random.Random(seed)
        slices, start = [], 0
        while start < n:
            count = min(rng.randint(self.min_texts, self.max_texts), n - start)
            slices.append((start, count))
            start += count
        return slices


SHAPES = (
    Shape("1 client x 32 texts", clients=1, min_texts=32, max_texts=32),
    Shape("32 clients x 1 text", clients=32, min_texts=1, max_texts=1),
    Shape("8 clients x 1-64 texts", clients=8, min_texts=1, max_texts=64),
)


def run_shape(port: int, texts: list[str], shape: Shape, api: Api = EMBED) -> ShapeResult:
    slices = shape.cut(len(texts))
    todo = iter(slices)
    lock = threading.Lock()
    latencies: list[float] = []
    rows: list[list[float] | None] = [None] * len(texts)
    errors: list[BaseException] = []

    def client_loop() -> None:
        client = Client(port, api=api)
        try:
            while not errors:
                with lock:
                    item = next(todo, None)
                if item is None:
                    return
                start, count = item
                seconds, vectors = client.embed(texts[start: start + count])
                with lock:
                    latencies.append(seconds * 1000)
                rows[start: start + count] = vectors
        except BaseException as exc:
            errors.append(exc)
        finally:
            client.close()

    threads = [threading.Thread(target=client_loop, name=f"client-{i}") for i in range(shape.clients)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - began
    if errors:
        raise LoadError(f"{shape.name}: {errors[0]}") from errors[0]
    return ShapeResult(shape.name, len(texts), len(slices), seconds, latencies,
                       np.asarray(rows, dtype=np.float32))


def light_load(port: int, texts: list[str], requests: int, pause: float = 0.05) -> list[float]:
    """Latencies (ms) of single-text requests sent one at a time with a pause between: an idle server."""
    client = Client(port)
    try:
        for text in texts[:3]:  # warm the connection and the server's paths
            client.embed([text])
        latencies = []
        for i in range(requests):
            time.sleep(pause)
            seconds, _ = client.embed([texts[i % len(texts)]])
            latencies.append(seconds * 1000)
        return latencies
    finally:
        client.close()


def interleaved_lone(targets: dict[str, tuple[int, Api]], texts: list[str], n: int,
                     pause: float = 0.05) -> dict[str, list[float]]:
    """Latencies (ms) of ``n`` single-text requests to each server, sent in turn to one and then the next (the
    order reversed every other round, so that none always goes first), ``pause`` seconds apart: a moment of
    noise from the machine's other users hits them all alike."""
    clients = {name: Client(port, api=api) for name, (port, api) in targets.items()}
    try:
        for client in clients.values():  # warm each connection and server path
            for text in texts[:3]:
                client.embed([text])
        latencies: dict[str, list[float]] = {name: [] for name in clients}
        for i in range(n):
            order = list(clients) if i % 2 == 0 else list(reversed(clients))
            for name in order:
                time.sleep(pause)
                seconds, _ = clients[name].embed([texts[i % len(texts)]])
                latencies[name].append(seconds * 1000)
        return latencies
    finally:
        for client in clients.values():
            client.close()


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return (a64 * b64).sum(1) / (np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1))
