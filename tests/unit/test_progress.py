"""PROGRESS lines (embed_common/progress.py) and how the supervisor folds its children's events into the
cluster's (Supervisor.on_event): the seed's three events once, ``model_loaded`` only when a worker is ready
and the front listens."""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from embed_common import progress
from supervisor.supervisor import Child, ClusterSettings, Supervisor

# -- the line format --------------------------------------------------------------------------------------


def test_format_is_the_seeds_line() -> None:
    line = progress.format_event("model_loaded", {"model": "all-MiniLM-L6-v2", "dimensions": 384})
    assert line.startswith("PROGRESS:") and "\n" not in line
    assert json.loads(line[len("PROGRESS:"):]) == {"type": "model_loaded",
                                                   "data": {"model": "all-MiniLM-L6-v2", "dimensions": 384}}


@pytest.mark.parametrize("data", [{}, {"model": "ünïcode/模型"}, {"text": "two\nlines"}, {"n": [1, 2.5, None]}])
def test_parse_reads_what_format_writes(data: dict[str, Any]) -> None:
    line = progress.format_event("some_event", data)
    assert "\n" not in line  # one event, one line, whatever the data holds
    assert progress.parse_line(line) == {"type": "some_event", "data": data}


def test_emit_writes_one_flushed_line() -> None:
    out = io.StringIO()
    progress.emit("model_cached", {"model": "m"}, out)
    progress.emit("download_started", {"model": "m"}, out)
    lines = out.getvalue().splitlines()
    assert [progress.parse_line(line)["type"] for line in lines] == ["model_cached", "download_started"]
    assert out.getvalue().endswith("\n")


@pytest.mark.parametrize("line", [
    "",
    "hello",
    "progress:{\"type\": \"x\", \"data\": {}}",
    " PROGRESS:{\"type\": \"x\", \"data\": {}}",
    "PROGRESS:",
    "PROGRESS:{not json",
    "PROGRESS:[1, 2]",
    "PROGRESS:\"model_loaded\"",
    "PROGRESS:{\"data\": {}}",
    "PROGRESS:{\"type\": 3, \"data\": {}}",
])
def test_parse_ignores_what_is_not_an_event(line: str) -> None:
    assert progress.parse_line(line) is None


def test_parse_gives_missing_or_odd_data_as_empty() -> None:
    assert progress.parse_line('PROGRESS:{"type": "x"}') == {"type": "x", "data": {}}
    assert progress.parse_line('PROGRESS:{"type": "x", "data": [1]}') == {"type": "x", "data": {}}


# -- the supervisor's aggregation -------------------------------------------------------------------------


class Recorder:
    """A Supervisor with its stdout in memory; children as records, nothing started."""

    def __init__(self) -> None:
        self.out = io.StringIO()
        self.supervisor = Supervisor(ClusterSettings(workers="2"), stdout=self.out)
        self.front = Child("front", [], "front")
        self.workers = [Child(f"worker-{i}", [], "worker", "cpu") for i in range(2)]

    def worker(self, index: int, event_type: str, **data: Any) -> None:
        self.supervisor.on_event(self.workers[index], {"type": event_type, "data": data})

    def front_listens(self) -> None:
        self.supervisor.on_event(self.front, {"type": "front_listening", "data": {
            "host": "127.0.0.1", "port": 8421, "url": "http://127.0.0.1:8421"}})

    def front_sees_a_worker(self) -> None:
        self.supervisor.on_event(self.front, {"type": "front_ready", "data": {}})

    def loads(self, index: int) -> None:
        self.worker(index, "model_loaded", model="all-MiniLM-L6-v2", dimensions=384, device="cpu",
                    precision="fp32", seconds=1.5, worker=f"host-{index}")

    def ready(self, index: int) -> None:
        self.worker(index, "worker_ready", worker=f"host-{index}", device="cpu", precision="fp32", pid=100 + index)

    def events(self) -> list[dict[str, Any]]:
        lines = self.out.getvalue().splitlines()
        events = [progress.parse_line(line) for line in lines]
        assert all(events), f"stdout holds a line that is not an event: {lines}"
        return events  # type: ignore[return-value]

    def types(self) -> list[str]:
        return [e["type"] for e in self.events()]

    def close(self) -> None:
        self.supervisor.context.term()
        shutil.rmtree(self.supervisor.rundir, ignore_errors=True)


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    r = Recorder()
    yield r
    r.close()


def test_model_cached_once_for_the_cluster_and_loaded_when_a_worker_is_ready_and_the_front_listens(
        recorder: Recorder) -> None:
    recorder.worker(0, "model_cached", model="all-MiniLM-L6-v2", worker="host-0")
    recorder.worker(1, "model_cached", model="all-MiniLM-L6-v2", worker="host-1")
    recorder.loads(0)
    recorder.ready(0)
    assert "model_loaded" not in recorder.types()  # the front does not listen yet
    recorder.front_listens()
    assert "model_loaded" not in recorder.types()  # its /health cannot say ok yet: it has not seen the worker
    recorder.front_sees_a_worker()
    recorder.loads(1)
    recorder.ready(1)
    assert recorder.types() == ["model_cached", "worker_loaded", "worker_ready", "front_listening",
                                "model_loaded", "worker_loaded", "worker_ready"]
    events = recorder.events()
    assert events[0]["data"] == {"model": "all-MiniLM-L6-v2"}  # the seed's data, nothing more
    assert events[4]["data"] == {"model": "all-MiniLM-L6-v2", "dimensions": 384}
    assert events[1]["data"]["worker"] == "worker-0" and events[5]["data"]["worker"] == "worker-1"
    assert events[2]["data"]["worker"] == "worker-0" and events[2]["data"]["pid"] == 100


def test_model_loaded_waits_for_a_ready_worker_when_the_front_listens_first(recorder: Recorder) -> None:
    recorder.front_listens()
    recorder.worker(0, "model_cached", model="all-MiniLM-L6-v2")
    recorder.loads(0)
    assert "model_loaded" not in recorder.types()  # loaded is not ready: it has not registered yet
    recorder.ready(0)
    assert "model_loaded" not in recorder.types()
    recorder.front_sees_a_worker()
    assert recorder.types()[-2:] == ["worker_ready", "model_loaded"]


def test_a_download_is_announced_once_with_the_progress_of_one_worker(recorder: Recorder) -> None:
    for index in (0, 1):
        recorder.worker(index, "download_started", model="mini-model")
    for files_done in (1, 2):
        for index in (0, 1):
            recorder.worker(index, "download_progress", model="mini-model", file=f"f{files_done}",
                            files_done=files_done, files_total=2, bytes_done=10 * files_done, bytes_total=20)
    recorder.worker(1, "model_cached", model="mini-model")  # too late to change the story
    recorder.front_listens()
    recorder.loads(0)
    recorder.ready(0)
    recorder.front_sees_a_worker()
    types = recorder.types()
    assert types.count("download_started") == 1 and "model_cached" not in types
    progress_events = [e["data"] for e in recorder.events() if e["type"] == "download_progress"]
    assert [p["files_done"] for p in progress_events] == [1, 2]
    assert progress_events[-1] == {"model": "mini-model", "file": "f2", "files_done": 2, "files_total": 2,
                                   "bytes_done": 20, "bytes_total": 20}
    assert types.index("download_started") < types.index("download_progress") < types.index("model_loaded")


def test_a_worker_that_fails_to_load_is_reported_with_a_reason(recorder: Recorder) -> None:
    recorder.worker(0, "worker_failed", worker="host-0", reason="model test-org/x not found on the hub",
                    error="MODEL_LOAD_FAILED")
    [event] = recorder.events()
    assert event["type"] == "worker_failed"
    assert event["data"]["worker"] == "worker-0" and "not found" in event["data"]["reason"]


def test_events_the_cluster_does_not_relay_stay_off_stdout(recorder: Recorder) -> None:
    recorder.worker(0, "something_internal", detail=1)
    assert recorder.out.getvalue() == ""
