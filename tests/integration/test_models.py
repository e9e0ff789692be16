"""Several models in one real cluster: the bundled MiniLM (the default), a copy of it with query/document
prompts and a tiny cross-encoder, each served by its own worker and compared with in-process
sentence-transformers on the same files (vectors, rerank scores and order); routing by model with no job given
to another model's worker; the OpenAI and Cohere SDKs; a worker killed in one model's pool while the other
serves on. One cluster for the module (CI time); the kill test runs last.
"""

from __future__ import annotations

import itertools
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest

from tests.conftest import Cluster, cosine_rows, eventually, sample_texts
from tests.model_files import minilm_with_prompts, tiny_cross_encoder

pytestmark = pytest.mark.slow

DEFAULT = "sentence-transformers/all-MiniLM-L6-v2"
SECOND = "second"  # the alias of the copy with prompts
RERANKER = "reranker"
QUERY = "how do workers share the load of a request?"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {"prompts": minilm_with_prompts(root), "reranker": tiny_cross_encoder(root)}


@pytest.fixture(scope="module")
def cluster(files: dict[str, Path]) -> Iterator[Cluster]:
    c = Cluster("--workers", "1", "--model", f"{DEFAULT},{SECOND}={files['prompts']},{RERANKER}={files['reranker']}")
    try:
        yield c.wait_ready(timeout=400)
    finally:
        c.stop()


@pytest.fixture(scope="module")
def second_model(files: dict[str, Path]) -> Any:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(files["prompts"]), device="cpu")


@pytest.fixture(scope="module")
def cross_encoder(files: dict[str, Path]) -> Any:
    from sentence_transformers import CrossEncoder

    return CrossEncoder(str(files["reranker"]), device="cpu")


TIE = 1e-6  # scores closer than this are a tie: ONNX Runtime's and torch's float32 sums may order them either way


def assert_ranked_as(indices: list[int], expected: Any) -> None:
    """``indices`` rank the texts as ``expected`` (in-process scores) does, best first: every pair out of
    in-process order is a tie, and the ranking holds every text once."""
    scores = [float(expected[i]) for i in indices]
    assert all(a >= b - TIE for a, b in itertools.pairwise(scores)), scores
    assert sorted(indices) == sorted(set(indices))


def served_by_model(cluster: Cluster) -> dict[str, int]:
    served: dict[str, int] = {}
    for worker in cluster.get("/health").json()["workers"]:
        served[worker["model"]] = served.get(worker["model"], 0) + worker["served_texts"]
    return served


def test_every_model_is_listed(cluster: Cluster, files: dict[str, Path]) -> None:
    health = cluster.get("/health").json()
    assert health["status"] == "ok" and health["model"] == "all-MiniLM-L6-v2"  # the seed's fields: the default
    assert [(m["alias"], m["model_id"], m["kind"], m["workers"]) for m in health["models"]] == [
        ("all-MiniLM-L6-v2", DEFAULT, "embed", 1), (SECOND, str(files["prompts"]), "embed", 1),
        (RERANKER, str(files["reranker"]), "rerank", 1)]
    info = cluster.get("/info").json()
    assert [m["alias"] for m in info["models"]] == ["all-MiniLM-L6-v2", SECOND, RERANKER] and info["dim"] == 384
    assert [m["id"] for m in cluster.get("/v1/models").json()["data"]] == [DEFAULT, str(files["prompts"]),
                                                                          str(files["reranker"])]
    assert cluster.get(f"/v1/models/{SECOND}").json()["id"] == str(files["prompts"])
    loaded = [e for e in cluster.events if e["type"] == "model_loaded"]
    assert [m["alias"] for m in loaded[0]["data"]["models"]] == ["all-MiniLM-L6-v2", SECOND, RERANKER]
    assert len(loaded) == 1 and [m["kind"] for m in loaded[0]["data"]["models"]] == ["embed", "embed", "rerank"]
    cached = [e["data"].get("alias") for e in cluster.events if e["type"] == "model_cached"]
    assert sorted(cached) == sorted(["all-MiniLM-L6-v2", SECOND, RERANKER])  # once per model


def test_requests_name_their_model_and_only_its_workers_serve_them(cluster: Cluster, reference_model: Any,
                                                                    second_model: Any) -> None:
    before = served_by_model(cluster)
    texts = sample_texts(40, seed=3)
    default = np.asarray(cluster.embed(texts))  # the seed's request: the default model
    assert cosine_rows(default, reference_model.encode(texts)).min() > 0.999
    second = np.asarray(cluster.embed(texts[:30], model=SECOND))
    assert cosine_rows(second, second_model.encode(texts[:30])).min() > 0.999
    by_id = cluster.post("/embed", json={"texts": sample_texts(5, seed=9), "model": DEFAULT})  # not cached yet
    assert by_id.status_code == 200
    expected = {"all-MiniLM-L6-v2": before["all-MiniLM-L6-v2"] + 45, SECOND: before[SECOND] + 30,
                RERANKER: before[RERANKER]}
    eventually(lambda: served_by_model(cluster) == expected, lambda: f"served {served_by_model(cluster)}", 10)
    missing = cluster.post("/embed", json={"texts": ["x"], "model": "no-such-model"})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "MODEL_NOT_FOUND"


def test_the_openai_sdk_names_the_second_model(cluster: Cluster, second_model: Any, files: dict[str, Path]) -> None:
    texts = sample_texts(8, seed=4)
    with openai.OpenAI(base_url=cluster.url + "/v1", api_key="unused", max_retries=0, timeout=60) as sdk:
        reply = sdk.embeddings.create(model=SECOND, input=texts)
        with pytest.raises(openai.NotFoundError):
            sdk.embeddings.create(model="no-such-model", input=texts)
    vectors = np.asarray([d.embedding for d in reply.data])
    assert reply.model == str(files["prompts"])
    assert cosine_rows(vectors, second_model.encode(texts)).min() > 0.999
    tokens = second_model.tokenizer(texts, truncation=True, max_length=second_model.max_seq_length)["input_ids"]
    assert reply.usage.prompt_tokens == sum(map(len, tokens))


def test_prompts_equal_encode_with_the_same_prompt(cluster: Cluster, second_model: Any) -> None:
    texts = sample_texts(12, seed=10)
    cases = [({"prompt_name": "query"}, {"prompt_name": "query"}),
             ({"input_type": "document"}, {"prompt_name": "document"}),  # mapped to the model's own prompt
             ({"prompt": "Represent this: "}, {"prompt": "Represent this: "}),
             ({}, {})]  # none asked for, and the model has no default_prompt_name: none
    for fields, encode_kwargs in cases:
        served = np.asarray(cluster.embed(texts, model=SECOND, **fields))
        assert cosine_rows(served, second_model.encode(texts, **encode_kwargs)).min() > 0.999, fields
    with_prompt = np.asarray(cluster.embed(texts, model=SECOND, prompt_name="query"))
    assert cosine_rows(with_prompt, second_model.encode(texts)).min() < 0.999  # the prompt changes the vectors
    bad = cluster.post("/embed", json={"texts": ["x"], "model": SECOND, "prompt_name": "nope"})
    assert bad.status_code == 400 and "query" in bad.json()["error"]["message"]


def test_chunks_name_their_model_and_prompt(cluster: Cluster, second_model: Any) -> None:
    text = " ".join(sample_texts(12, seed=14))
    r = cluster.post("/embed/chunks", json={"texts": [text], "chunk_tokens": 64, "model": SECOND,
                                            "input_type": "document"})
    assert r.status_code == 200, r.text
    chunks, vectors = r.json()["chunks"], np.asarray(r.json()["vectors"])
    expected = second_model.encode([c["text"] for c in chunks], prompt_name="document")
    assert len(chunks) > 1 and cosine_rows(vectors, expected).min() > 0.999


def test_prompt_tokens_count_in_the_usage_and_the_window(cluster: Cluster, second_model: Any) -> None:
    texts = sample_texts(6, seed=11)
    r = cluster.post("/v1/embeddings", json={"model": SECOND, "input": texts, "input_type": "query"})
    assert r.status_code == 200, r.text
    tokens = second_model.tokenizer(["query: " + t for t in texts], truncation=True,
                                    max_length=second_model.max_seq_length)["input_ids"]
    assert r.json()["usage"]["prompt_tokens"] == sum(map(len, tokens))
    vectors = np.asarray([d["embedding"] for d in r.json()["data"]])
    assert cosine_rows(vectors, second_model.encode(texts, prompt_name="query")).min() > 0.999
    words = second_model.max_seq_length - 2  # one token a word: exactly the window without a prompt
    exact = " ".join(["word"] * words)
    assert cluster.post("/embed", json={"texts": [exact], "model": SECOND, "truncate": False}).status_code == 200
    over = cluster.post("/embed", json={"texts": [exact], "model": SECOND, "truncate": False, "prompt_name": "query"})
    assert over.status_code == 422 and over.json()["error"]["code"] == "INPUT_TOO_LONG"


def test_token_counts_equal_the_tokenizers(cluster: Cluster, second_model: Any, reference_model: Any) -> None:
    texts = [*sample_texts(10, seed=12), " ".join(["long"] * 400), ""]
    r = cluster.post("/tokenize", json={"texts": texts, "return_ids": True})
    assert r.status_code == 200, r.text
    answer = r.json()
    tokenizer, window = reference_model.tokenizer, reference_model.max_seq_length
    assert answer["max_tokens"] == window and answer["model"] == DEFAULT
    assert answer["counts"] == [len(ids) for ids in tokenizer(texts)["input_ids"]]  # none cut
    assert answer["ids"] == tokenizer(texts, truncation=True, max_length=window)["input_ids"]  # what it is fed
    assert answer["truncated"] == [i for i, count in enumerate(answer["counts"]) if count > window] and \
        10 in answer["truncated"]
    prompted = cluster.post("/tokenize", json={"texts": texts[:3], "model": SECOND, "prompt_name": "query"}).json()
    assert prompted["counts"] == [len(ids) for ids in second_model.tokenizer(["query: " + t for t in texts[:3]])[
        "input_ids"]]
    chunks = cluster.post("/embed/chunks", json={"texts": [texts[0] * 8], "chunk_tokens": 20}).json()["chunks"]
    counted = cluster.post("/tokenize", json={"texts": [c["text"] for c in chunks]}).json()["counts"]
    assert len(chunks) > 1 and max(counted) - 2 <= 20  # the chunker cuts by the same counts ([CLS], [SEP] aside)


def test_rerank_scores_and_order_equal_in_process(cluster: Cluster, cross_encoder: Any) -> None:
    texts = sample_texts(150, seed=7)  # three jobs, spread over the reranker's worker and batched as texts are
    expected = cross_encoder.predict([(QUERY, t) for t in texts])
    r = cluster.post("/rerank", json={"query": QUERY, "texts": texts, "return_text": True})
    assert r.status_code == 200, r.text
    answer = r.json()
    assert sorted(a["index"] for a in answer) == list(range(150))
    assert_ranked_as([a["index"] for a in answer], expected)
    assert np.allclose([a["score"] for a in answer], expected[[a["index"] for a in answer]], atol=1e-5)
    backends = {w["backend"] for w in cluster.get("/health").json()["workers"] if w["model"] == RERANKER}
    assert backends <= {"onnx", "torch"} and len(backends) == 1  # either engine: the same scores
    assert all(a["text"] == texts[a["index"]] for a in answer)
    raw = cluster.post("/rerank", json={"query": QUERY, "texts": texts[:10], "raw_scores": True}).json()
    import torch

    logits = cross_encoder.predict([(QUERY, t) for t in texts[:10]], activation_fn=torch.nn.Identity())
    assert np.allclose([a["score"] for a in sorted(raw, key=lambda a: a["index"])], logits, atol=1e-5)


def test_rerank_asks_the_right_kind_of_model(cluster: Cluster) -> None:
    wrong = cluster.post("/rerank", json={"query": QUERY, "texts": ["x"], "model": SECOND})
    assert wrong.status_code == 400 and "not a reranker" in wrong.json()["error"]["message"]
    embed = cluster.post("/embed", json={"texts": ["x"], "model": RERANKER})
    assert embed.status_code == 400 and "not an embedding model" in embed.json()["error"]["message"]
    missing = cluster.post("/v1/rerank", json={"query": QUERY, "documents": ["x"], "model": "no-such"})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "MODEL_NOT_FOUND"


def test_the_cohere_sdk_reranks(cluster: Cluster, cross_encoder: Any, files: dict[str, Path]) -> None:
    import cohere
    import httpx

    texts = sample_texts(30, seed=8)
    expected = cross_encoder.predict([(QUERY, t) for t in texts])
    with httpx.Client(timeout=60) as http:  # the SDKs' own would be left open
        reply = cohere.Client(api_key="unused", base_url=cluster.url, httpx_client=http).rerank(
            model=RERANKER, query=QUERY, documents=texts, top_n=5, return_documents=True)
        v2 = cohere.ClientV2(api_key="unused", base_url=cluster.url, httpx_client=http).rerank(
            model=RERANKER, query=QUERY, documents=texts, top_n=3)
    best = [r.index for r in reply.results]
    assert_ranked_as(best, expected)
    assert min(expected[best]) >= np.sort(expected)[-5] - TIE  # the top 5
    assert np.allclose([r.relevance_score for r in reply.results], expected[best], atol=1e-5)
    assert [r.document.text for r in reply.results] == [texts[i] for i in best]
    raw = cluster.post("/v1/rerank", json={"model": str(files["reranker"]), "query": QUERY, "documents": texts})
    tokens = cross_encoder.tokenizer([QUERY] * 30, texts, truncation=True,
                                     max_length=cross_encoder.max_seq_length)["input_ids"]
    assert raw.json()["usage"]["total_tokens"] == sum(map(len, tokens))
    assert [r.index for r in v2.results] == best[:3]  # Cohere's v2 client posts to /v2/rerank: the same order


def test_the_python_client_names_models_prompts_rerank_and_tokenize(cluster: Cluster, second_model: Any,
                                                                     cross_encoder: Any) -> None:
    from embed_client.client import EmbedClient

    client = EmbedClient(cluster.url, max_texts=16)  # small requests: the client splits and merges
    texts = sample_texts(40, seed=13)
    vectors = np.asarray(client.embed(texts[:5], model=SECOND, prompt_name="query"))
    assert cosine_rows(vectors, second_model.encode(texts[:5], prompt_name="query")).min() > 0.999
    ranked = client.rerank(QUERY, texts, model=RERANKER, top_n=20)
    expected = cross_encoder.predict([(QUERY, t) for t in texts])
    assert_ranked_as([r["index"] for r in ranked], expected)
    assert min(expected[[r["index"] for r in ranked]]) >= np.sort(expected)[-20] - TIE  # the top 20
    counts = client.tokenize(texts, model=SECOND)["counts"]
    assert counts == [len(ids) for ids in second_model.tokenizer(texts)["input_ids"]]


def test_a_worker_killed_in_one_pool_the_other_serves_on(cluster: Cluster) -> None:
    workers = cluster.get("/health").json()["workers"]
    victim = next(w for w in workers if w["model"] == SECOND)
    os.kill(victim["pid"], signal.SIGKILL)
    eventually(lambda: cluster.get("/health").json()["models"][1]["workers"] == 0, "the second pool empty", 30)
    texts = sample_texts(20, seed=5)
    assert len(cluster.embed(texts)) == 20  # the default model serves on meanwhile
    eventually(lambda: cluster.get("/health").json()["status"] == "ok", "the second model's worker back", 300)
    assert len(cluster.embed(texts, model=SECOND)) == 20
