"""Several models in one broker, over inproc:// with real worker loops: a pool each, jobs routed by model, no
job ever given to another model's worker, one pool's loss leaves the other serving."""

from __future__ import annotations

import pytest

from embed_common.models import ModelSpec, parse_models
from http_front.errors import ApiError
from tests.unit.inproc import SILENCE_KILLS_SOONER, CrashingWorkerLoop, fake_vectors
from worker.embedder import FakeEmbedder

MODELS = "first=fake/model-a,second=fake/model-b"
TEXTS = [f"text {i} " + "word " * (i % 5) for i in range(150)]


def two_model_cluster(make_cluster, **settings):
    cluster = make_cluster(models=parse_models(MODELS), **settings)
    a = [cluster.add_worker(FakeEmbedder(dim=8, model_id="fake/model-a")) for _ in range(2)]
    b = [cluster.add_worker(FakeEmbedder(dim=4, model_id="fake/model-b"), loop_class=CrashingWorkerLoop)
         for _ in range(2)]
    return cluster, a, b


def test_the_model_list_names_aliases_and_refuses_duplicates() -> None:
    assert parse_models("fake/model-a, e5=/models/e5-small") == (ModelSpec("model-a", "fake/model-a"),
                                                                  ModelSpec("e5", "/models/e5-small"))
    for bad in ("a=x,a=y", "x/m,y/m", "a,,b", "bad alias=x", "e5="):
        with pytest.raises(ValueError):
            parse_models(bad)


def test_jobs_go_to_their_models_workers_only(make_cluster) -> None:
    cluster, a, b = two_model_cluster(make_cluster)
    default = cluster.client.embed(TEXTS, True, 30)  # no model named: the default (first) one
    assert default.vectors.shape == (150, 8)
    assert cluster.client.embed(TEXTS, True, 30, model="second").vectors.shape == (150, 4)
    assert cluster.client.embed(TEXTS, True, 30, model="fake/model-b").vectors.shape == (150, 4)  # by its id
    assert cluster.client.embed(TEXTS, True, 30, model="model-a").vectors.shape == (150, 8)  # by its short name
    assert (cluster.client.embed(TEXTS[:3], True, 30, model="second").vectors == fake_vectors(TEXTS[:3], dim=4)).all()
    status = cluster.wait_status(lambda s: sum(w["served_texts"] for w in s["workers"]) == 150 * 4 + 3, "served")
    served = {}
    for worker in status["workers"]:
        served[worker["model"]] = served.get(worker["model"], 0) + worker["served_texts"]
    assert served == {"first": 150 * 2, "second": 150 * 2 + 3}
    probe = 2  # each worker encodes its probe texts once, at start
    assert sum(sum(w.embedder.batches) - probe for w in a) == 150 * 2  # what the workers themselves encoded
    assert sum(sum(w.embedder.batches) - probe for w in b) == 150 * 2 + 3
    assert [m["alias"] for m in status["models"]] == ["first", "second"]
    assert {w["model"] for w in status["workers"]} == {"first", "second"}
    assert status["model"] == "fake/model-a"  # the seed's fields: the default model's


def test_an_unknown_model_is_not_found(make_cluster) -> None:
    cluster, _, _ = two_model_cluster(make_cluster)
    with pytest.raises(ApiError) as raised:
        cluster.client.embed(["x"], True, 30, model="third")
    assert raised.value.code == "MODEL_NOT_FOUND" and "first" in raised.value.message


def test_a_worker_of_no_served_model_is_refused(make_cluster) -> None:
    cluster, _, _ = two_model_cluster(make_cluster)
    other = cluster.add_worker(FakeEmbedder(model_id="fake/model-c"), wait=False)
    other.thread.join(timeout=15)
    assert other.exit_code == 3 and "model-c" in (other.loop.refused or "")
    wrong_dim = cluster.add_worker(FakeEmbedder(dim=16, model_id="fake/model-b"), wait=False)  # its pool's check
    wrong_dim.thread.join(timeout=15)
    assert wrong_dim.exit_code == 3 and "16 dimensions" in (wrong_dim.loop.refused or "")


def test_one_models_pool_lost_the_other_serves_on(make_cluster) -> None:
    cluster, _, b = two_model_cluster(make_cluster, **SILENCE_KILLS_SOONER)
    for worker in b:
        worker.loop.crash()
    cluster.wait_status(lambda s: {w["model"] for w in s["workers"]} == {"first"}, "the second pool empty")
    assert cluster.client.embed(TEXTS, True, 30).vectors.shape == (150, 8)
    status = cluster.wait_status(lambda s: True, "a status")
    assert [m["workers"] for m in status["models"]] == [2, 0]
    with pytest.raises(ApiError) as raised:  # waits for a worker of its own model, never taken by another
        cluster.client.embed(["x"], True, 0.2, model="second")
    assert raised.value.code == "TIMEOUT"
    replacement = cluster.add_worker(FakeEmbedder(dim=4, model_id="fake/model-b"))
    assert cluster.client.embed(["x"], True, 30, model="second").vectors.shape == (1, 4)
    assert replacement.embedder.batches == [2, 1]  # its probe, then the one text: the timed-out job was dropped
