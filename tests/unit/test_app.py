"""The Falcon app through falcon.testing, in front of a real BrokerClient, Broker and fake workers in-process."""

from __future__ import annotations

import json

import falcon.testing
import numpy as np
import pytest

from embed_common.protocol import Command
from http_front.app import create_app
from tests.unit.inproc import LIMITS, InprocCluster, RawPeer, Served, eventually, fake_vectors


def submitted(cluster: InprocCluster) -> int:
    """Jobs the broker has accepted so far (a fresh status, asked for now: not one cached before the last
    request, and no wait for the front's next one)."""
    asker = RawPeer(cluster.context, cluster.settings.client_address)
    try:
        asker.send(Command.STATUS, {"req": 1})
        answer = asker.recv()
    finally:
        asker.close()
    assert answer.command is Command.STATUS
    return int(answer.header["counters"]["submitted"])


def test_health_is_503_starting_until_a_worker_registers_then_200() -> None:
    cluster = InprocCluster()
    try:
        client = falcon.testing.TestClient(create_app(cluster.client, LIMITS))
        cluster.wait_status(lambda s: True, "the front's first status")
        before = client.simulate_get("/health")
        assert before.status_code == 503
        assert before.json["status"] == "starting" and before.json["workers"] == []
        worker = cluster.add_worker()
        after = eventually(lambda: (r := client.simulate_get("/health")).status_code == 200 and r, "200 /health")
        body = after.json
        assert body["status"] == "ok" and body["model"] == "fake-model" and body["dim"] == 8
        assert body["model_id"] == "fake/fake-model" and body["device"] == "cpu"
        assert [w["id"] for w in body["workers"]] == [worker.loop.worker_id]
        worker.loop.stop()  # it leaves: the cluster was ready once, so now it has no workers
        gone = eventually(lambda: (r := client.simulate_get("/health")).status_code == 503 and r, "503 /health")
        assert gone.json["status"] == "no_workers"
    finally:
        cluster.close()


def test_embed_returns_the_workers_vectors_in_order(client: falcon.testing.TestClient) -> None:
    texts = [f"text number {i}" for i in range(40)]
    r = client.simulate_post("/embed", json={"texts": texts})
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(np.array(r.json["vectors"]), fake_vectors(texts), rtol=1e-5)
    raw = client.simulate_post("/embed", json={"texts": texts[:3], "normalize": False})
    np.testing.assert_allclose(np.array(raw.json["vectors"]), fake_vectors(texts[:3], normalize=False), rtol=1e-5)


def test_empty_list_never_reaches_the_broker(served: Served) -> None:
    client, cluster = served
    before = submitted(cluster)
    r = client.simulate_post("/embed", json={"texts": []})
    assert r.status_code == 200 and r.json == {"vectors": []}
    assert submitted(cluster) == before


BAD_INPUT = [
    (b"{not json", "INVALID_JSON", "JSON"),
    (b"\xff\xfe", "INVALID_JSON", "JSON"),
    (b"", "INVALID_JSON", "JSON"),
    (b'["ok"]', "BAD_REQUEST", "object"),
    (b"null", "BAD_REQUEST", "object"),
    (b'{"normalize": true}', "BAD_REQUEST", "'texts' is required"),
    (b'{"texts": "hello"}', "BAD_REQUEST", "'texts'"),
    (b'{"texts": null}', "BAD_REQUEST", "'texts'"),
    (b'{"texts": {"a": 1}}', "BAD_REQUEST", "'texts'"),
    (b'{"texts": ["ok", 3]}', "BAD_REQUEST", "texts[1]"),
    (b'{"texts": ["ok", null]}', "BAD_REQUEST", "texts[1]"),
    (b'{"texts": [["nested"]]}', "BAD_REQUEST", "texts[0]"),
    (b'{"texts": ["ok"], "normalize": "yes"}', "BAD_REQUEST", "normalize"),
    (b'{"texts": ["ok"], "normalize": 1}', "BAD_REQUEST", "normalize"),
    (b'{"texts": ["ok"], "normalize": null}', "BAD_REQUEST", "normalize"),
    (b'{"texts": ["ok"], "colour": 1}', "BAD_REQUEST", "colour"),
    (json.dumps({"texts": ["x"] * 51}).encode(), "BAD_REQUEST", "limit is 50"),
    (json.dumps({"texts": ["ok", "x" * 501]}).encode(), "BAD_REQUEST", "texts[1]"),
]


@pytest.mark.parametrize(("body", "code", "mentions"), BAD_INPUT, ids=[repr(b[:24]) for b, _, _ in BAD_INPUT])
def test_bad_input_is_a_400_with_a_code_and_reaches_no_worker(
        served: Served, body: bytes, code: str, mentions: str) -> None:
    client, cluster = served
    before = submitted(cluster)
    r = client.simulate_post("/embed", body=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    assert set(r.json) == {"error"} and r.json["error"]["code"] == code
    assert mentions in r.json["error"]["message"]
    assert submitted(cluster) == before
    assert client.simulate_post("/embed", json={"texts": ["still serving"]}).status_code == 200


def test_a_body_over_the_limit_is_refused_by_its_content_length(client: falcon.testing.TestClient) -> None:
    body = json.dumps({"texts": ["x" * 400] * 11}).encode()
    assert len(body) > LIMITS.max_body_bytes
    r = client.simulate_post("/embed", body=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and r.json["error"]["code"] == "PAYLOAD_TOO_LARGE"
    assert str(len(body)) in r.json["error"]["message"]  # known from Content-Length, before reading


def test_unknown_route_and_method_are_json_errors(client: falcon.testing.TestClient) -> None:
    missing = client.simulate_get("/nope")
    assert missing.status_code == 404 and missing.json["error"]["code"] == "NOT_FOUND"
    wrong = client.simulate_get("/embed")
    assert wrong.status_code == 405 and wrong.json["error"]["code"] == "METHOD_NOT_ALLOWED"


def test_info_describes_the_model_and_limits(client: falcon.testing.TestClient) -> None:
    info = client.simulate_get("/info").json
    assert info["model_id"] == "fake/fake-model" and info["dim"] == 8 and info["device"] == "cpu"
    assert info["version"] and info["limits"]["max_texts"] == 50 and info["limits"]["max_body_bytes"] == 4096
    assert info["max_tokens"] == 32 and len(info["workers"]) == 1
