"""The core path through real processes: `embed-cluster up` with the bundled model."""

from __future__ import annotations

import os
import signal
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests

from tests.conftest import Cluster, cosine_rows, eventually, sample_texts, wait_http

pytestmark = pytest.mark.slow


def test_health_info_shapes(cluster: Cluster) -> None:
    health = cluster.get("/health")
    assert health.status_code == 200
    body = health.json()
    assert body["status"] == "ok"
    assert body["model"] == "all-MiniLM-L6-v2"
    assert body["dim"] == 384
    assert body["device"] == "cpu"
    [worker] = body["workers"]
    assert worker["device"] == "cpu" and worker["state"] in ("ready", "busy") and worker["pid"] > 0
    info = cluster.get("/info").json()
    assert info["model_id"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert info["dim"] == 384 and info["device"] == "cpu" and info["version"]


def test_vectors_match_sentence_transformers_under_concurrency(cluster: Cluster, reference_model) -> None:
    texts = sample_texts(320, seed=1)
    expected = reference_model.encode(texts, normalize_embeddings=True, batch_size=32)
    requests_ = [texts[i: i + 10] for i in range(0, len(texts), 10)]
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(cluster.embed, requests_))
    got = np.array([v for answer in answers for v in answer])
    assert got.shape == expected.shape
    cos = cosine_rows(got, expected)
    assert cos.min() > 0.999, f"worst cosine {cos.min()} at {cos.argmin()}"
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-4)


def test_input_order_is_kept_within_a_large_request(cluster: Cluster, reference_model) -> None:
    texts = sample_texts(200, seed=2)  # several jobs, spread and batched by length
    got = np.array(cluster.embed(texts))
    expected = reference_model.encode(texts, normalize_embeddings=True)
    assert cosine_rows(got, expected).min() > 0.999


def test_normalize_false_returns_unnormalized_vectors(cluster: Cluster, reference_model) -> None:
    texts = ["a short text", "a rather longer text about embeddings and clusters"]
    raw = np.array(cluster.embed(texts, normalize=False))
    norms = np.linalg.norm(raw, axis=1)
    assert np.all(np.abs(norms - 1.0) > 0.01), norms
    unit = np.array(cluster.embed(texts))
    assert cosine_rows(raw, unit).min() > 0.9999


def test_empty_list(cluster: Cluster) -> None:
    r = cluster.post("/embed", json={"texts": []})
    assert r.status_code == 200 and r.json() == {"vectors": []}


@pytest.mark.parametrize(
    ("body", "code", "mentions"),
    [
        (b"{not json", "INVALID_JSON", "JSON"),
        (b'{"normalize": true}', "BAD_REQUEST", "texts"),
        (b'{"texts": "hello"}', "BAD_REQUEST", "texts"),
        (b'{"texts": ["ok", 3]}', "BAD_REQUEST", "texts[1]"),
        (b'{"texts": ["ok"], "normalize": "yes"}', "BAD_REQUEST", "normalize"),
        (b'{"texts": ["ok"], "colour": 1}', "BAD_REQUEST", "colour"),
        (b'["ok"]', "BAD_REQUEST", "object"),
    ],
)
def test_bad_input_is_a_400_with_a_code(cluster: Cluster, body: bytes, code: str, mentions: str) -> None:
    r = cluster.post("/embed", data=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == code and mentions in error["message"]
    assert cluster.embed(["still serving"])  # and the server keeps serving


def test_progress_events_in_order(cluster: Cluster) -> None:
    types = [e["type"] for e in cluster.events]
    assert all(line.startswith("PROGRESS:") for line in cluster.lines), cluster.lines
    assert types.count("model_loaded") == 1
    assert types.count("model_cached") == 1 and "download_started" not in types
    assert types.index("worker_started") < types.index("model_cached") < types.index("worker_ready")
    assert types.index("worker_ready") < types.index("model_loaded")
    loaded = next(e for e in cluster.events if e["type"] == "model_loaded")
    assert loaded["data"] == {"model": "all-MiniLM-L6-v2", "dimensions": 384}


def test_sigkill_worker_is_replaced(cluster: Cluster) -> None:
    [pid] = cluster.worker_pids()
    mark = len(cluster.events)
    os.kill(pid, signal.SIGKILL)
    exited = cluster.wait_event("worker_exited", after=mark, timeout=30)
    assert exited["data"]["pid"] == pid and exited["data"]["code"] == -signal.SIGKILL
    cluster.wait_event("worker_restarted", after=mark, timeout=30)
    cluster.wait_event("worker_ready", after=mark, timeout=120)
    wait_http(cluster.url + "/health", lambda r: r.status_code == 200, timeout=30)
    assert cluster.worker_pids() != [pid]
    assert len(cluster.embed(["back again"])[0]) == 384


def test_without_workers_health_says_starting_and_embed_says_no_workers() -> None:
    c = Cluster("--workers", "0")
    try:
        c.wait_event("front_listening", timeout=60)
        r = wait_http(c.url + "/health", lambda r: r.status_code == 503, timeout=30)
        assert r.json()["status"] == "starting" and r.json()["workers"] == []

        def refused() -> list[requests.Response]:  # the broker refuses at once once its start-up grace is over
            e = requests.post(c.url + "/embed", json={"texts": ["x"]}, timeout=60)
            return [e] if e.status_code == 503 else []  # a list: a 503 Response is falsy

        [e] = eventually(refused, "/embed refused with 503 once the broker's start-up grace is over", timeout=30)
        assert e.status_code == 503, e.text
        assert e.json()["error"]["code"] == "NO_WORKERS" and e.headers["Retry-After"]
    finally:
        assert c.stop() == 0


def test_python_client_splits_and_reassembles_through_the_cluster(cluster: Cluster, reference_model) -> None:
    from embed_client import EmbedClient

    texts = sample_texts(90, seed=3)
    client = EmbedClient(cluster.url, max_texts=16)
    assert client.check_health() and client.info()["dim"] == 384
    got = np.array(client.embed(texts))
    assert cosine_rows(got, reference_model.encode(texts)).min() > 0.999
