"""Start-up faults and a client that goes away, in process: doctor's start-up checks, the supervisor's
preflight (one startup_failed event, exit 1, nothing started) and the broker client's cancel of a gone
client's queued jobs (against a real broker over inproc://)."""

from __future__ import annotations

import io
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from embed_common import progress
from http_front.errors import ApiError
from supervisor.doctor import check_device, check_keys, check_model, looks_like_path, startup_checks
from supervisor.supervisor import Child, ClusterSettings, Supervisor


@pytest.mark.parametrize(("model", "is_path"), [
    ("sentence-transformers/all-MiniLM-L6-v2", False), ("all-MiniLM-L6-v2", False),
    ("/models/minilm", True), ("./minilm", True), ("~/models/minilm", True), ("models/a/b", True),
    ("C:\\models\\minilm", True),
])
def test_a_model_path_is_told_from_a_hub_id(model: str, is_path: bool) -> None:
    assert looks_like_path(model) is is_path


def test_a_missing_model_directory_is_unavailable_without_asking_the_hub(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: a probe would fail loudly
    check = check_model(str(tmp_path / "missing"), probe_hub=False)
    assert not check.ok and check.code == "MODEL_UNAVAILABLE" and "missing" in check.message
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    check = check_model("test-org/not-cached-anywhere", probe_hub=False)
    assert check.ok and check.details == {"cached": False}  # left to the worker's download
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    check = check_model("test-org/not-cached-anywhere", probe_hub=False)
    assert not check.ok and check.code == "MODEL_UNAVAILABLE"


def test_a_device_is_checked_against_the_devices_given() -> None:
    absent = check_device("cuda", True, ["cpu"])
    assert not absent.ok and absent.code == "DEVICE_UNAVAILABLE"
    assert check_device("cuda:1", True, ["cuda:0", "cuda:1", "cpu"]).ok
    assert not check_device("cuda:2", True, ["cuda:0", "cuda:1", "cpu"]).ok


def test_a_key_directory_without_the_broker_key_is_invalid(tmp_path: Path) -> None:
    check = check_keys(str(tmp_path))
    assert not check.ok and check.code == "KEYS_INVALID" and "does not exist" in check.message


def test_startup_checks_name_the_port_in_use() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen(1)
        port = held.getsockname()[1]
        failed = [c for c in startup_checks("127.0.0.1", port, "sentence-transformers/all-MiniLM-L6-v2", "auto",
                                            None, ["cpu"]) if not c.ok]
    assert [c.code for c in failed] == ["PORT_IN_USE"]


def test_the_supervisor_reports_one_startup_failure_and_starts_nothing() -> None:
    out = io.StringIO()
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen(1)
        supervisor = Supervisor(ClusterSettings(port=held.getsockname()[1], workers="1"), stdout=out)
        try:
            code = supervisor.run()
        finally:
            shutil.rmtree(supervisor.rundir, ignore_errors=True)
    events = [progress.parse_line(line) for line in out.getvalue().splitlines()]
    assert code == 1
    assert [e["type"] for e in events if e] == ["startup_failed"]
    assert events[0] and events[0]["data"]["code"] == "PORT_IN_USE" and events[0]["data"]["part"] == "front"
    assert supervisor.children == []


def test_a_front_that_cannot_bind_ends_the_start_once_and_is_not_restarted() -> None:
    out = io.StringIO()
    supervisor = Supervisor(ClusterSettings(workers="1"), stdout=out)
    try:
        front = Child("front", [], "front")
        failure = {"code": "PORT_IN_USE", "reason": "cannot listen on 127.0.0.1:8421: Address already in use",
                   "part": "front"}
        supervisor.on_event(front, {"type": "startup_failed", "data": failure})
        supervisor.on_event(front, {"type": "startup_failed", "data": failure})
        supervisor.on_exit(front, 1, time.monotonic())
        events = [progress.parse_line(line) for line in out.getvalue().splitlines()]
        assert [e["type"] for e in events if e] == ["startup_failed"]
        assert supervisor.should_exit.is_set() and front.restart_at is None
    finally:
        supervisor.context.term()
        shutil.rmtree(supervisor.rundir, ignore_errors=True)


def test_a_gone_clients_queued_jobs_are_cancelled(make_cluster) -> None:
    cluster = make_cluster(no_worker_grace=30.0)  # no worker: every job stays queued
    gone = threading.Event()
    threading.Timer(0.05, gone.set).start()
    started = time.monotonic()
    with pytest.raises(ApiError) as caught:
        cluster.client.embed([f"text {i}" for i in range(130)], True, 20.0, gone=gone.is_set)  # 3 jobs
    assert caught.value.code == "CLIENT_GONE" and caught.value.status == 499
    assert time.monotonic() - started < 2.0
    cluster.wait_status(lambda s: s["counters"]["cancelled"] == 3 and s["queue_jobs"] == 0,
                        "the three jobs were cancelled")
