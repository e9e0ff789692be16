"""Several models in one real cluster: the bundled MiniLM (the default) and a copy of it with query/document
prompts, each served by its own worker and compared with in-process sentence-transformers on the same files;
routing by model with no job given to another model's worker; a worker killed in one model's pool while the
other serves on. One cluster for the module (CI time); the kill test runs last.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest

from tests.conftest import Cluster, cosine_rows, eventually, sample_texts
from tests.model_files import minilm_with_prompts

pytestmark = pytest.mark.slow

DEFAULT = "sentence-transformers/all-MiniLM-L6-v2"
SECOND = "second"  # the alias of the copy with prompts


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {"prompts": minilm_with_prompts(root)}


@pytest.fixture(scope="module")
def cluster(files: dict[str, Path]) -> Iterator[Cluster]:
    c = Cluster("--workers", "1", "--model", f"{DEFAULT},{SECOND}={files['prompts']}")
    try:
        yield c.wait_ready(timeout=400)
    finally:
        c.stop()


@pytest.fixture(scope="module")
def second_model(files: dict[str, Path]) -> Any:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(files["prompts"]), device="cpu")


def served_by_model(cluster: Cluster) -> dict[str, int]:
    served: dict[str, int] = {}
    for worker in cluster.get("/health").json()["workers"]:
        served[worker["model"]] = served.get(worker["model"], 0) + worker["served_texts"]
    return served


def test_every_model_is_listed(cluster: Cluster, files: dict[str, Path]) -> None:
    health = cluster.get("/health").json()
    assert health["status"] == "ok" and health["model"] == "all-MiniLM-L6-v2"  # the seed's fields: the default
    assert [(m["alias"], m["model_id"], m["workers"]) for m in health["models"]] == [
        ("all-MiniLM-L6-v2", DEFAULT, 1), (SECOND, str(files["prompts"]), 1)]
    info = cluster.get("/info").json()
    assert [m["alias"] for m in info["models"]] == ["all-MiniLM-L6-v2", SECOND] and info["dim"] == 384
    assert [m["id"] for m in cluster.get("/v1/models").json()["data"]] == [DEFAULT, str(files["prompts"])]
    assert cluster.get(f"/v1/models/{SECOND}").json()["id"] == str(files["prompts"])
    loaded = [e for e in cluster.events if e["type"] == "model_loaded"]
    assert len(loaded) == 1 and [m["alias"] for m in loaded[0]["data"]["models"]] == ["all-MiniLM-L6-v2", SECOND]
    cached = [e["data"].get("alias") for e in cluster.events if e["type"] == "model_cached"]
    assert sorted(cached) == sorted(["all-MiniLM-L6-v2", SECOND])  # once per model


def test_requests_name_their_model_and_only_its_workers_serve_them(cluster: Cluster, reference_model: Any,
                                                                    second_model: Any) -> None:
    before = served_by_model(cluster)
    texts = sample_texts(40, seed=3)
    default = np.asarray(cluster.embed(texts))  # the seed's request: the default model
    assert cosine_rows(default, reference_model.encode(texts)).min() > 0.999
    second = np.asarray(cluster.embed(texts[:30], model=SECOND))
    assert cosine_rows(second, second_model.encode(texts[:30])).min() > 0.999
    by_id = cluster.post("/embed", json={"texts": texts[:5], "model": DEFAULT})
    assert by_id.status_code == 200
    expected = {"all-MiniLM-L6-v2": before["all-MiniLM-L6-v2"] + 45, SECOND: before[SECOND] + 30}
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


def test_a_worker_killed_in_one_pool_the_other_serves_on(cluster: Cluster) -> None:
    workers = cluster.get("/health").json()["workers"]
    victim = next(w for w in workers if w["model"] == SECOND)
    os.kill(victim["pid"], signal.SIGKILL)
    eventually(lambda: cluster.get("/health").json()["models"][1]["workers"] == 0, "the second pool empty", 30)
    texts = sample_texts(20, seed=5)
    assert len(cluster.embed(texts)) == 20  # the default model serves on meanwhile
    eventually(lambda: cluster.get("/health").json()["status"] == "ok", "the second model's worker back", 300)
    assert len(cluster.embed(texts, model=SECOND)) == 20
