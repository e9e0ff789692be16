"""The front's API extras in-process (falcon.testing over create_app, a real Broker and BrokerClient, a fake
worker): the API key, request ids, the probes, /v1 shapes and errors, truncation across jobs, /metrics and the
OpenAPI document. The real model and real processes are in tests/integration/test_api.py."""

from __future__ import annotations

import base64
import dataclasses
from typing import Any

import falcon.inspect
import falcon.testing
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from http_front.auth import bind_refusal, is_loopback
from tests.unit import inproc
from tests.unit.inproc import eventually, fake_vectors

KEY = "unit-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
LIMITS = dataclasses.replace(inproc.LIMITS, max_body_bytes=1 << 20, max_texts=300, max_text_chars=5000)
LONG = " ".join(f"w{i}" for i in range(40))  # over the fake embedder's 32 tokens


@pytest.fixture(scope="module")
def app_options() -> dict[str, Any]:
    return {"limits": LIMITS, "api_key": KEY}


@pytest.mark.parametrize(("host", "loopback"), [("127.0.0.1", True), ("127.8.9.10", True), ("::1", True),
                                                ("[::1]", True), ("localhost", True), ("0.0.0.0", False),
                                                ("::", False), ("192.0.2.7", False), ("box.lan", False)])
def test_loopback_and_the_bind_rule(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
    assert (bind_refusal(host, None, insecure=False) is None) is loopback
    assert bind_refusal(host, "a key", insecure=False) is None and bind_refusal(host, None, insecure=True) is None


def test_the_key_is_required_except_on_the_probes(client: falcon.testing.TestClient) -> None:
    for headers in ({"Authorization": ""}, {"Authorization": "Bearer nope"}, {"Authorization": f"Basic {KEY}"}):
        r = client.simulate_post("/embed", json={"texts": ["x"]}, headers=headers)
        assert r.status_code == 401 and r.json["error"]["code"] == "UNAUTHORIZED"
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
    r = client.simulate_get("/v1/models", headers={"Authorization": ""})
    assert r.status_code == 401 and r.json["error"]["type"] == "authentication_error"
    for path in ("/livez", "/readyz", "/openapi.json"):
        assert client.simulate_get(path, headers={"Authorization": ""}).status_code == 200
    assert client.simulate_post("/embed", json={"texts": ["x"]}).status_code == 200


def test_request_ids(client: falcon.testing.TestClient) -> None:
    assert client.simulate_get("/info", headers={"X-Request-ID": "abc.123"}).headers["X-Request-ID"] == "abc.123"
    made = {client.simulate_get("/info").headers["X-Request-ID"] for _ in range(3)}
    assert len(made) == 3 and all(len(m) == 32 for m in made)
    assert client.simulate_get("/info", headers={"X-Request-ID": "x" * 129}).headers["X-Request-ID"] != "x" * 129


def test_openai_embeddings_shapes(client: falcon.testing.TestClient) -> None:
    texts = ["alpha beta", "gamma"]
    r = client.simulate_post("/v1/embeddings", json={"model": "fake-model", "input": texts})
    assert r.status_code == 200, r.text
    body = r.json
    assert body["object"] == "list" and body["model"] == "fake/fake-model"
    assert [(d["object"], d["index"]) for d in body["data"]] == [("embedding", 0), ("embedding", 1)]
    assert np.allclose([d["embedding"] for d in body["data"]], fake_vectors(texts), atol=1e-6)
    assert body["usage"] == {"prompt_tokens": 4 + 3, "total_tokens": 7}  # words + 2 special tokens each
    r = client.simulate_post("/v1/embeddings", json={"model": "fake/fake-model", "input": "gamma",
                                                      "encoding_format": "base64", "dimensions": 3})
    row = np.frombuffer(base64.b64decode(r.json["data"][0]["embedding"]), dtype="<f4")
    cut = fake_vectors(["gamma"])[0][:3]
    assert np.allclose(row, cut / np.linalg.norm(cut), atol=1e-6)
    empty = client.simulate_post("/v1/embeddings", json={"model": "fake-model", "input": []}).json
    assert empty["data"] == [] and empty["usage"]["prompt_tokens"] == 0


@pytest.mark.parametrize(("body", "status", "param"), [
    ({"input": "x"}, 400, "model"),
    ({"model": "fake-model"}, 400, "input"),
    ({"model": "other", "input": "x"}, 404, "model"),
    ({"model": "fake-model", "input": 3}, 400, "input"),
    ({"model": "fake-model", "input": [1, 2, 3]}, 400, "input"),
    ({"model": "fake-model", "input": "x", "encoding_format": "hex"}, 400, "encoding_format"),
    ({"model": "fake-model", "input": "x", "dimensions": 0}, 400, "dimensions"),
    ({"model": "fake-model", "input": "x", "dimensions": 9}, 400, "dimensions"),
    ({"model": "fake-model", "input": "x", "dimensions": True}, 400, "dimensions"),
    ({"model": "fake-model", "input": "x", "colour": 1}, 400, "colour"),
])
def test_openai_errors(client: falcon.testing.TestClient, body: dict[str, Any], status: int, param: str) -> None:
    r = client.simulate_post("/v1/embeddings", json=body)
    assert r.status_code == status, r.text
    error = r.json["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error" and error["code"]
    assert isinstance(error["message"], str)


def test_errors_keep_the_house_shape_outside_v1(client: falcon.testing.TestClient) -> None:
    assert set(client.simulate_get("/nope").json["error"]) == {"code", "message"}
    assert client.simulate_get("/v1/nope").json["error"]["type"] == "invalid_request_error"


def test_truncation_across_jobs(client: falcon.testing.TestClient) -> None:
    texts = ["short"] * 150
    for i in (3, 64, 149):  # first, second and third job of 64
        texts[i] = LONG
    r = client.simulate_post("/embed", json={"texts": texts})
    assert r.status_code == 200 and r.json["truncated"] == [3, 64, 149]
    assert "truncated" not in client.simulate_post("/embed", json={"texts": ["short"]}).json
    r = client.simulate_post("/embed", json={"texts": texts, "truncate": False})
    assert r.status_code == 422 and r.json["error"]["indices"] == [3, 64, 149]
    assert r.json["error"]["max_tokens"] == 32
    assert client.simulate_post("/embed", json={"texts": ["ok"], "truncate": False}).status_code == 200


def samples(client: falcon.testing.TestClient) -> dict[tuple[str, frozenset], float]:
    r = client.simulate_get("/metrics")
    assert r.status_code == 200
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def test_metrics(client: falcon.testing.TestClient) -> None:
    before = samples(client)
    texts = ["one two", "three", LONG]
    client.simulate_post("/v1/embeddings", json={"model": "fake-model", "input": texts})
    client.simulate_post("/v1/embeddings", json={"model": "fake-model", "input": [LONG], "truncate": False})

    def moved(after: dict[tuple[str, frozenset], float], name: str, **labels: str) -> float:
        key = (name, frozenset(labels.items()))
        return after.get(key, 0.0) - before.get(key, 0.0)

    after = samples(client)
    route = {"route": "/v1/embeddings"}
    assert moved(after, "embed_http_requests_total", method="POST", code="OK", **route) == 1
    assert moved(after, "embed_http_requests_total", method="POST", code="INPUT_TOO_LONG", **route) == 1
    assert moved(after, "embed_texts_total", outcome="OK", **route) == 3
    assert moved(after, "embed_texts_total", outcome="INPUT_TOO_LONG", **route) == 1
    assert moved(after, "embed_tokens_total", **route) == 4 + 3 + 32
    assert moved(after, "embed_truncated_texts_total", **route) == 1
    assert moved(after, "embed_stage_seconds_count", stage="encode") == 1
    assert sum(after[("embed_workers", frozenset({"state": s}.items()))] for s in ("ready", "busy")) == 1
    batches = eventually(lambda: moved(samples(client), "embed_batch_size_texts_sum", worker="w0") >= 3,
                         "the worker's heartbeat carries the batch")
    assert batches


def test_openapi_lists_every_route(client: falcon.testing.TestClient) -> None:
    spec = client.simulate_get("/openapi.json").json
    routes = {route.path for route in falcon.inspect.inspect_routes(client.app)}
    documented = {path.replace("/v1/models/{model}", "/v1/models/{model:path}") for path in spec["paths"]}
    assert routes == documented
    embeddings = spec["components"]["schemas"]["EmbeddingsRequest"]["properties"]
    assert embeddings["model"]["enum"] == ["fake-model", "fake/fake-model"]
    assert embeddings["dimensions"]["maximum"] == 8
    assert spec["components"]["schemas"]["EmbedRequest"]["properties"]["texts"]["maxItems"] == 300
