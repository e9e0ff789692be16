"""The API around /embed through a real cluster: the OpenAI-compatible routes (driven by the official openai
SDK), explicit truncation, /metrics, request ids, the probes, the API key on a non-loopback bind, and the
OpenAPI document checked against the live server by schemathesis.

One cluster for the module, bound to 0.0.0.0 with an API key, so every test also goes through the key check.
"""

from __future__ import annotations

import base64
import os
import re
import secrets
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from prometheus_client.parser import text_string_to_metric_families
from schemathesis.checks import positive_data_acceptance

from tests.conftest import ROOT, Cluster, cli, cosine_rows, eventually, sample_texts, wait_http

pytestmark = pytest.mark.slow

KEY = "test-" + secrets.token_hex(16)
AUTH = {"Authorization": f"Bearer {KEY}"}
MODEL = "sentence-transformers/all-MiniLM-L6-v2"
LONG = " ".join(["embedding"] * 400)  # far over all-MiniLM-L6-v2's 256 tokens
SPEC_EXAMPLES = 10  # generated requests per operation and mode: bounded, so the check stays fast


@pytest.fixture(scope="module")
def api() -> Iterator[Cluster]:
    c = Cluster("--workers", "1", "--host", "0.0.0.0", env={"EMBED_API_KEY": KEY})
    try:
        c.wait_event("model_loaded", timeout=180)
        wait_http(c.url + "/readyz", lambda r: r.status_code == 200, timeout=30)  # open without the key
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def http(api: Cluster) -> Iterator[requests.Session]:
    with requests.Session() as session:
        session.headers.update(AUTH)
        yield session


@pytest.fixture(scope="module")
def sdk(api: Cluster) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=api.url + "/v1", api_key=KEY, max_retries=0, timeout=60) as client:
        yield client  # closed before the cluster stops: an idle keep-alive connection delays the front's exit


def embed(http: requests.Session, api: Cluster, texts: list[str], **kw: Any) -> np.ndarray:
    r = http.post(api.url + "/embed", json={"texts": texts, **kw}, timeout=60)
    assert r.status_code == 200, r.text
    return np.array(r.json()["vectors"], dtype=np.float32)


# -- auth ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/embed", "/health", "/info", "/metrics", "/v1/models", "/status.json",
                                  "/no/such/route"])
def test_without_the_key_every_route_but_the_probes_is_401(api: Cluster, path: str) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        r = requests.request("POST" if path == "/embed" else "GET", api.url + path, headers=headers,
                             json={"texts": ["x"]}, timeout=30)
        assert r.status_code == 401, (path, headers, r.text)
        assert r.json()["error"]["code"] == "UNAUTHORIZED"
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
    for open_path in ("/livez", "/readyz", "/openapi.json", "/status", "/status/assets/status.js"):
        assert requests.get(api.url + open_path, timeout=30).status_code == 200


def test_the_key_is_never_in_a_process_argv(api: Cluster, http: requests.Session) -> None:
    assert http.get(api.url + "/health", timeout=30).status_code == 200
    seen = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                seen.append((proc / "cmdline").read_bytes())
            except OSError:
                continue  # exited meanwhile
    assert len(seen) > 4  # the supervisor, broker, front and worker at least
    assert not [cmd for cmd in seen if KEY.encode() in cmd]


@pytest.mark.parametrize("command", ["up", "front"])
def test_a_non_loopback_bind_without_a_key_is_refused(command: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMBED_")}
    out = subprocess.run(cli(command, "--host", "0.0.0.0", "--port", "1"), cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "EMBED_API_KEY" in out.stderr and "--insecure" in out.stderr
    assert out.stdout == ""  # refused before anything started: not even a PROGRESS event


def test_insecure_serves_without_a_key() -> None:
    c = Cluster("--workers", "0", "--host", "0.0.0.0", "--insecure")  # no model: the front is enough
    try:
        c.wait_event("front_listening", timeout=60)
        assert wait_http(c.url + "/info", lambda r: r.status_code == 200, timeout=30).json()["version"]
    finally:
        assert c.stop() == 0


# -- OpenAI-compatible routes ----------------------------------------------------------------------------


def test_sdk_default_base64_matches_embed(api: Cluster, http: requests.Session, sdk: openai.OpenAI) -> None:
    texts = sample_texts(12, seed=6)
    reply = sdk.embeddings.create(model=MODEL, input=texts)  # the SDK asks for base64 and decodes it
    assert reply.model == MODEL and [d.index for d in reply.data] == list(range(len(texts)))
    got = np.array([d.embedding for d in reply.data], dtype=np.float32)
    expected = embed(http, api, texts)
    assert got.shape == expected.shape == (len(texts), 384)
    assert np.allclose(got, expected, atol=1e-5)
    as_float = sdk.embeddings.create(model="all-MiniLM-L6-v2", input=texts[0], encoding_format="float")
    assert np.allclose(as_float.data[0].embedding, expected[0], atol=1e-5)


def test_base64_is_little_endian_float32(api: Cluster, http: requests.Session) -> None:
    r = http.post(api.url + "/v1/embeddings", json={"model": MODEL, "input": ["one", "two"],
                                                    "encoding_format": "base64"}, timeout=60)
    assert r.status_code == 200, r.text
    rows = [np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in r.json()["data"]]
    assert np.allclose(np.array(rows), embed(http, api, ["one", "two"]), atol=1e-5)


def test_dimensions_cut_then_renormalize(api: Cluster, http: requests.Session, sdk: openai.OpenAI) -> None:
    texts = ["cut me to 64 dimensions", "and me"]
    reply = sdk.embeddings.create(model=MODEL, input=texts, dimensions=64)
    got = np.array([d.embedding for d in reply.data])
    full = embed(http, api, texts)
    expected = full[:, :64] / np.linalg.norm(full[:, :64], axis=1, keepdims=True)
    assert got.shape == (2, 64)
    assert np.allclose(got, expected, atol=1e-5)
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    with pytest.raises(openai.BadRequestError) as too_many:
        sdk.embeddings.create(model=MODEL, input="x", dimensions=385)
    assert too_many.value.code == "BAD_REQUEST" and "385" in too_many.value.message


def test_usage_counts_the_tokenizers_tokens(sdk: openai.OpenAI, reference_model: Any) -> None:
    texts = sample_texts(8, seed=7)[:8]
    texts = [t for t in texts if len(reference_model.tokenizer(t)["input_ids"]) <= 256]
    assert texts
    expected = sum(len(reference_model.tokenizer(t)["input_ids"]) for t in texts)  # special tokens included
    usage = sdk.embeddings.create(model=MODEL, input=texts).usage
    assert usage.prompt_tokens == usage.total_tokens == expected


def test_models_and_openai_shaped_errors(api: Cluster, sdk: openai.OpenAI) -> None:
    assert [m.id for m in sdk.models.list()] == [MODEL]
    assert sdk.models.retrieve(MODEL).owned_by == "embed-cluster"
    with pytest.raises(openai.NotFoundError) as missing:
        sdk.embeddings.create(model="text-embedding-3-small", input="x")
    assert missing.value.code == "MODEL_NOT_FOUND" and MODEL in missing.value.message
    assert missing.value.body["type"] == "invalid_request_error" and missing.value.body["param"] == "model"
    with openai.OpenAI(base_url=api.url + "/v1", api_key="wrong", max_retries=0) as stranger, \
            pytest.raises(openai.AuthenticationError):
        stranger.embeddings.create(model=MODEL, input="x")
    r = requests.post(api.url + "/v1/embeddings", headers={**AUTH, "Content-Type": "application/json"}, data=b"{oops",
                      timeout=30)
    assert r.status_code == 400 and set(r.json()["error"]) >= {"message", "type", "code", "param"}
    r = requests.post(api.url + "/v1/embeddings", headers=AUTH, json={"model": MODEL, "input": [[1, 2]]}, timeout=30)
    assert r.status_code == 400 and "token arrays" in r.json()["error"]["message"]


# -- truncation ------------------------------------------------------------------------------------------


def test_embed_reports_truncated_inputs(api: Cluster, http: requests.Session, reference_model: Any) -> None:
    texts = ["short", LONG, "also short"]
    r = http.post(api.url + "/embed", json={"texts": texts}, timeout=60)
    assert r.status_code == 200 and r.json()["truncated"] == [1]
    expected = reference_model.encode(texts, normalize_embeddings=True)  # sentence-transformers cuts at 256 too
    assert cosine_rows(r.json()["vectors"], expected).min() > 0.999
    plain = http.post(api.url + "/embed", json={"texts": ["short"]}, timeout=60).json()
    assert "truncated" not in plain  # the seed's response shape when nothing was cut


def test_truncate_false_is_422_naming_request_level_indices(api: Cluster, http: requests.Session) -> None:
    texts = ["x"] * 140
    for i in (1, 70, 139):  # in the first, second and third job of 64 texts
        texts[i] = LONG
    r = http.post(api.url + "/embed", json={"texts": texts, "truncate": False}, timeout=60)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "INPUT_TOO_LONG" and error["indices"] == [1, 70, 139]
    assert "[1, 70, 139]" in error["message"] and "256" in error["message"]
    r = http.post(api.url + "/v1/embeddings", json={"model": MODEL, "input": ["ok", LONG], "truncate": False},
                  timeout=60)
    assert r.status_code == 422 and r.json()["error"]["indices"] == [1] and r.json()["error"]["type"]
    r = http.post(api.url + "/embed", json={"texts": ["ok"], "truncate": "no"}, timeout=60)
    assert r.status_code == 400 and "truncate" in r.json()["error"]["message"]


# -- observability ---------------------------------------------------------------------------------------


def scrape(api: Cluster) -> dict[tuple[str, frozenset], float]:
    r = requests.get(api.url + "/metrics", headers=AUTH, timeout=30)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/plain")
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def metric(samples: dict[tuple[str, frozenset], float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_metrics_move_as_requests_are_served(api: Cluster, http: requests.Session, reference_model: Any) -> None:
    texts = sample_texts(30, seed=8)
    before = scrape(api)
    embed(http, api, texts)
    assert http.post(api.url + "/embed", json={"texts": ["x"], "normalize": 3}, timeout=30).status_code == 400
    after = scrape(api)

    def moved(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    route = {"route": "/embed"}
    assert moved("embed_http_requests_total", method="POST", code="OK", **route) == 1
    assert moved("embed_http_requests_total", method="POST", code="BAD_REQUEST", **route) == 1
    assert moved("embed_texts_total", outcome="OK", **route) == len(texts)
    tokens = sum(min(len(reference_model.tokenizer(t)["input_ids"]), 256) for t in texts)
    assert moved("embed_tokens_total", **route) == tokens
    for stage in ("queue", "encode", "total"):
        assert moved("embed_stage_seconds_count", stage=stage) == 1
    assert moved("embed_stage_seconds_sum", stage="total") > 0
    assert metric(after, "embed_workers", state="ready") + metric(after, "embed_workers", state="busy") == 1
    assert metric(after, "embed_broker_up") == 1
    # every request was answered: the queue gauge comes back to 0 by the broker's next status
    eventually(lambda: metric(scrape(api), "embed_queue_texts") == 0, "the queue gauge back to 0", timeout=10)

    def batched() -> Any:  # batch sizes come with the worker's heartbeats (one a second): the next one
        latest = scrape(api)
        done = (metric(latest, "embed_batch_size_texts_sum", worker="worker-0")
                - metric(before, "embed_batch_size_texts_sum", worker="worker-0"))
        return latest if done >= len(texts) else None  # (`before` may predate an earlier test's batch)

    latest = eventually(batched, "the worker's heartbeat reports the batch", timeout=10, interval=0.2)
    assert metric(latest, "embed_batch_size_texts_count", worker="worker-0") >= 1


def test_request_ids_are_echoed_generated_and_logged(api: Cluster, http: requests.Session) -> None:
    given = "req-" + secrets.token_hex(6)
    r = http.post(api.url + "/embed", json={"texts": ["id me"]}, headers={"X-Request-ID": given}, timeout=30)
    assert r.headers["X-Request-ID"] == given
    generated = http.get(api.url + "/info", timeout=30).headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    unsafe = http.get(api.url + "/info", headers={"X-Request-ID": "a b\tc" * 40}, timeout=30)
    assert re.fullmatch(r"[0-9a-f]{32}", unsafe.headers["X-Request-ID"])  # not echoed into logs as it came
    assert requests.get(api.url + "/embed", timeout=30).headers["X-Request-ID"]  # errors carry one too

    def logged() -> str | None:
        text = api.log(tail=200_000)
        return text if given in text else None

    log = eventually(logged, "the request id in the front's log", timeout=5, interval=0.1)
    assert re.search(rf"POST /embed -> 200 OK .*\[request {given}\]", log)


def test_livez_and_readyz(api: Cluster) -> None:
    assert requests.get(api.url + "/livez", timeout=30).json() == {"status": "alive"}
    ready = requests.get(api.url + "/readyz", timeout=30)
    assert ready.status_code == 200 and ready.json() == {"status": "ok"}


# -- the OpenAPI document against the live server ----------------------------------------------------------


def test_openapi_spec_matches_the_live_server(api: Cluster) -> None:
    """Schemathesis generates valid and invalid requests for every operation of the live /openapi.json and
    checks every answer against it: documented status, content type and body schema; no 5xx; invalid
    input refused; valid input accepted."""
    spec = requests.get(api.url + "/openapi.json", timeout=30).json()
    routes = {"/health", "/info", "/embed", "/v1/embeddings", "/v1/models", "/v1/models/{model}", "/metrics",
              "/livez", "/readyz", "/openapi.json", "/status", "/status.json"}
    assert routes <= set(spec["paths"])
    schemathesis.serializer.alias("application/pdf", "application/octet-stream")  # /embed/pdf: the raw bytes
    schema = schemathesis.openapi.from_dict(spec)
    checked = []
    for result in schema.get_all_operations():
        operation = result.ok()
        body = spec["paths"][operation.path][operation.method.lower()].get("requestBody", {}).get("content", {})
        modes = list(schemathesis.GenerationMode) if body else [schemathesis.GenerationMode.POSITIVE]
        excluded = [positive_data_acceptance] if operation.path in NOT_EXPRESSIBLE else []
        for mode in modes:  # (negative mode needs something to get wrong: a request body)
            fuzz(api, operation, mode, excluded)
            checked.append((operation.label, mode.value))
    assert len(checked) >= len(routes) + 2


# Routes whose rules a JSON schema cannot state, so that schema-valid input may rightly be refused (4xx);
# every other check still runs on them.
NOT_EXPRESSIBLE = {
    "/embed/pdf": "the body must be a real PDF (random bytes get 422 PDF_INVALID)",
    "/embed/chunks": "overlap_tokens must be less than chunk_tokens, a relation between two fields",
}


def fuzz(api: Cluster, operation: Any, mode: schemathesis.GenerationMode, excluded: list[Any]) -> None:
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=SPEC_EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    def check(case: schemathesis.Case) -> None:
        case.call_and_validate(base_url=api.url, headers=AUTH, timeout=60, excluded_checks=excluded)

    check()


# -- last: it restarts the worker ------------------------------------------------------------------------


def test_restarts_are_counted(api: Cluster, http: requests.Session) -> None:
    before = metric(scrape(api), "embed_worker_restarts_total", worker="worker-0")
    [pid] = [w["pid"] for w in http.get(api.url + "/health", timeout=30).json()["workers"]]
    mark = len(api.events)
    os.kill(pid, signal.SIGKILL)
    api.wait_event("worker_ready", after=mark, timeout=180)
    wait_http(api.url + "/readyz", lambda r: r.status_code == 200, timeout=30)
    samples = scrape(api)
    assert metric(samples, "embed_worker_restarts_total", worker="worker-0") == before + 1
    assert metric(samples, "embed_workers", state="ready") + metric(samples, "embed_workers", state="busy") == 1
