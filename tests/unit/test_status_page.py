"""The status page's history (http_front/status_history.py): ring buffers, rates, rows and events derived from
successive STATUS views; and the routes, through the real app in front of an in-process broker and workers.

The diffing tests feed StatusHistory scripted STATUS views (the broker's reply shape) on a simulated clock, so
that each step (a worker killed, back, in a crash loop, refused; a broker restart) is exact; the app tests
below go through a real Broker, BrokerClient and WorkerLoops.
"""

from __future__ import annotations

import time
from typing import Any

import falcon.testing
import pytest

from embed_common.models import parse_models
from embed_common.status import BrokerStatus
from http_front.app import create_app
from http_front.broker_client import BrokerClient
from http_front.routes import COUNTING
from http_front.status_history import SAMPLE_INTERVAL, StatusHistory, percentile
from tests.unit.inproc import LIMITS, eventually
from worker.embedder import FakeEmbedder


class Views:
    """What the history reads of a BrokerClient: ``broker_status()`` (None when stale) and
    ``heard_from_broker`` (whether one ever came); the test sets ``current``, a STATUS header."""

    def __init__(self) -> None:
        self.current: dict[str, Any] | None = None
        self.heard_from_broker = False

    def broker_status(self) -> BrokerStatus | None:
        self.heard_from_broker = self.heard_from_broker or self.current is not None
        return BrokerStatus.parse(self.current) if self.current is not None else None


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def worker(worker_id: str, served: int, pid: int = 100, state: str = "ready", **kw: Any) -> dict[str, Any]:
    return {"id": worker_id, "state": state, "device": "cpu", "precision": "fp16w", "host": "box", "pid": pid,
            "remote": False, "capacity": 256, "credit": 128, "inflight_texts": 0, "served_texts": served,
            "texts_per_s": 50.0, **kw}


def view(workers: list[dict[str, Any]], down: list[dict[str, Any]] | None = None, broker_id: str = "b1" * 16,
         restarts: dict[str, int] | None = None, refused: list[dict[str, Any]] | None = None,
         queue: int = 0) -> dict[str, Any]:
    return {"broker_id": broker_id, "ever_ready": True, "model": "fake/fake-model", "model_name": "fake-model",
            "dim": 8, "max_tokens": 32, "workers": workers, "workers_down": down or [], "queue_jobs": 0,
            "queue_texts": queue, "max_queue_texts": 50000, "counters": {}, "worker_restarts": restarts or {},
            "worker_stats": {}, "refused": refused or []}


@pytest.fixture
def scripted() -> tuple[StatusHistory, Views, Clock]:
    views, clock = Views(), Clock()
    history = StatusHistory(views, COUNTING, interval=1.0, window=10.0, max_events=50,  # type: ignore[arg-type]
                            left_keep=5.0, clock=clock, wall=clock)
    return history, views, clock


def step(history: StatusHistory, clock: Clock, seconds: float = 1.0) -> dict[str, Any]:
    clock.now += seconds
    return history.snapshot()


def rows(snapshot: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {w["id"]: w for w in snapshot["workers"]}


def kinds(snapshot: dict[str, Any]) -> list[str]:
    return [e["kind"] for e in reversed(snapshot["events"])]  # oldest first


def test_rates_come_from_served_counts_and_a_restart_does_not_count_twice(scripted) -> None:
    history, views, clock = scripted
    views.current = view([worker("w0", 0), worker("w1", 0, pid=101)])
    first = history.snapshot()
    assert kinds(first) == ["worker_joined", "worker_joined"]
    assert first["history"]["texts_per_s"] == [0.0]
    views.current = view([worker("w0", 64), worker("w1", 128, pid=101)])
    snap = step(history, clock, 2.0)
    assert snap["history"]["texts_per_s"][-1] == 96.0  # (64 + 128) texts in 2 s
    assert rows(snap)["w1"]["texts_per_s"] == round(128 / 3, 2)  # its last 5 intervals: 3 s, 128 texts
    # a new process under the same id counts from zero: its count is new work, not a negative delta
    views.current = view([worker("w0", 64), worker("w1", 10, pid=202)], restarts={"w1": 1})
    snap = step(history, clock)
    assert snap["history"]["texts_per_s"][-1] == 10.0
    assert rows(snap)["w1"]["restarts"] == 1
    # down and back between two samples: no report of it down was seen, but it is a restart all the same
    assert kinds(snap)[-1] == "worker_restarted" and "pid 202" in snap["events"][0]["text"]


def test_a_killed_worker_shows_restarting_then_ready_with_events(scripted) -> None:
    history, views, clock = scripted
    views.current = view([worker("w0", 0), worker("w1", 0, pid=101)])
    history.snapshot()
    down = {"id": "w1", "state": "restarting", "device": "cpu", "pid": 101, "exit_code": -9,
            "reason": "exited with code -9", "failures": 1, "restarts": 0, "restart_in": 1.0, "since": 1001.0}
    views.current = view([worker("w0", 5)], down=[down])
    snap = step(history, clock)
    assert rows(snap)["w1"]["state"] == "restarting" and rows(snap)["w1"]["reason"] == "exited with code -9"
    assert rows(snap)["w1"]["host"] == "box"  # what the broker said of it before it went down stays
    assert snap["events"][0]["kind"] == "worker_exited" and "restarting in 1 s" in snap["events"][0]["text"]
    step(history, clock)  # the same report again: no second event
    views.current = view([worker("w0", 5), worker("w1", 0, pid=303)], restarts={"w1": 1})
    snap = step(history, clock)
    assert rows(snap)["w1"]["state"] == "ready" and rows(snap)["w1"]["pid"] == 303
    assert rows(snap)["w1"]["restarts"] == 1 and rows(snap)["w1"]["reason"] is None
    assert kinds(snap) == ["worker_joined", "worker_joined", "worker_exited", "worker_restarted"]


def test_a_crash_loop_a_refusal_and_a_broker_restart_are_events(scripted) -> None:
    history, views, clock = scripted
    views.current = view([worker("w0", 0)])
    history.snapshot()
    failed = {"id": "w1", "state": "failed", "reason": "crash loop: 5 quick exits in a row", "restarts": 5,
              "restart_in": 16.0, "since": 1002.0, "device": "cpu"}
    refusal = {"at": 1002.5, "worker": "gpu-box", "host": "gpu", "reason": "this cluster serves fake-model"}
    views.current = view([worker("w0", 0)], down=[failed], refused=[refusal])
    snap = step(history, clock)
    assert rows(snap)["w1"]["state"] == "failed" and rows(snap)["w1"]["restarts"] == 5
    assert kinds(snap)[-2:] == ["worker_refused", "worker_failed"]
    assert "crash loop" in snap["events"][0]["text"] and "gpu-box" in snap["events"][1]["text"]
    views.current = view([], down=[failed], refused=[refusal], broker_id="b2" * 16)  # a new broker: no worker yet
    snap = step(history, clock)
    assert kinds(snap)[-2:] == ["broker_restarted", "worker_lost"]
    assert kinds(snap).count("worker_refused") == 1  # the same refusal, listed again, is not new
    views.current = view([worker("w0", 3)], down=[failed], refused=[refusal], broker_id="b2" * 16)
    snap = step(history, clock)
    assert kinds(snap)[-1] == "worker_restarted" and snap["history"]["texts_per_s"][-1] == 3.0


def test_a_worker_that_left_stays_greyed_for_a_while_then_goes(scripted) -> None:
    history, views, clock = scripted
    views.current = view([worker("w0", 0), worker("remote-1", 0, pid=7, remote=True)])
    history.snapshot()
    views.current = view([worker("w0", 0)])
    snap = step(history, clock)
    assert rows(snap)["remote-1"]["state"] == "left" and rows(snap)["remote-1"]["remote"] is True
    assert kinds(snap)[-1] == "worker_lost"
    snap = step(history, clock, 4.0)
    assert "remote-1" in rows(snap)
    snap = step(history, clock, 2.0)  # past left_keep (5 s)
    assert set(rows(snap)) == {"w0"}


def test_an_unreachable_broker_is_a_gap_and_an_event(scripted) -> None:
    history, views, clock = scripted
    views.current = view([worker("w0", 0)], queue=70)
    history.snapshot()
    views.current = None
    snap = step(history, clock)
    assert snap["history"]["texts_per_s"][-1] is None and snap["history"]["queue_texts"] == [70, None]
    assert kinds(snap)[-1] == "broker_unreachable"
    views.current = view([worker("w0", 0)])
    assert kinds(step(history, clock))[-1] == "broker_back"


def test_the_buffers_and_the_event_list_are_bounded(scripted) -> None:
    history, views, clock = scripted  # window 10 s at 1 s: 10 samples; 50 events
    for i in range(200):
        pid = 1000 + i  # a worker that restarts every second: an event or two each time
        views.current = view([worker("w0", i, pid=pid)] if i % 2 else [], restarts={"w0": i})
        step(history, clock)
    snap = history.snapshot()
    assert all(len(values) == 10 for values in snap["history"].values())
    assert len(snap["events"]) == 50
    assert snap["history"]["t"] == sorted(snap["history"]["t"])


def test_request_outcomes_and_latency_percentiles_per_interval(scripted) -> None:
    history, views, clock = scripted
    views.current = view([worker("w0", 0)])
    history.snapshot()
    for ms in range(1, 101):  # 1..100 ms
        history.observe_request("/embed", 200, ms / 1000)
    history.observe_request("/embed", 400, 0.001)
    history.observe_request("/v1/embeddings", 503, 0.001)
    history.observe_request("/health", 200, 5.0)  # counted as a request, not in the embedding latency
    history.observe_request("/status.json", 200, 9.0)  # the page watching itself: not counted at all
    snap = step(history, clock, 2.0)
    h = snap["history"]
    assert (h["ok_per_s"][-1], h["client_errors_per_s"][-1], h["server_errors_per_s"][-1]) == (50.5, 0.5, 0.5)
    assert h["p50_ms"][-1] == 49.0 and h["p95_ms"][-1] == 95.0  # of the 102 embedding requests' latencies
    snap = step(history, clock)
    assert snap["history"]["ok_per_s"][-1] == 0.0 and snap["history"]["p50_ms"][-1] is None  # a new interval


def test_percentile_is_nearest_rank() -> None:
    assert percentile([1.0], 0.5) == 1.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.0
    assert percentile([float(i) for i in range(1, 21)], 0.95) == 19.0


# -- the routes, through the real app in front of an in-process broker and a fake worker -------------------


KEY = "status-test-key"
INTERVAL = 0.05  # the apps' seconds between samples: a wait for the next one is this short (the front's is 1 s)


@pytest.fixture(scope="module")
def app_options() -> dict[str, Any]:
    return {"limits": LIMITS, "api_key": KEY, "history_interval": INTERVAL}


def test_the_front_samples_every_second_over_ten_minutes() -> None:
    client = falcon.testing.TestClient(create_app(BrokerClient("inproc://no-broker-here")))  # the front's defaults
    body = client.simulate_get("/status.json").json
    assert SAMPLE_INTERVAL == 1.0 and body["interval"] == 1.0 and body["window"] == 600.0


def test_the_page_and_its_assets_are_served_without_the_key(served) -> None:
    client, _ = served
    page = client.simulate_get("/status", headers={"Authorization": ""})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert '<script src="/status/assets/status.js"' in page.text and "worker" not in page.text.split("<main")[0]
    for name, kind in (("status.js", "text/javascript"), ("status.css", "text/css")):
        asset = client.simulate_get(f"/status/assets/{name}", headers={"Authorization": ""})
        assert asset.status_code == 200 and asset.headers["content-type"].startswith(kind), name
    missing = client.simulate_get("/status/assets/../app.py", headers={"Authorization": ""})
    assert missing.status_code == 404 and missing.json["error"]["code"] == "NOT_FOUND"
    assert client.simulate_get("/status/assets/secret.txt").status_code == 404


def test_the_data_needs_the_key(served) -> None:
    client, _ = served
    for auth in ("", "Bearer wrong"):
        r = client.simulate_get("/status.json", headers={"Authorization": auth})
        assert r.status_code == 401 and r.json["error"]["code"] == "UNAUTHORIZED"


def test_the_page_watching_itself_is_not_counted(served) -> None:
    client, _ = served
    history = eventually(lambda: client.simulate_get("/status.json").json["history"], "a sample")
    before = len(history["t"])
    for _ in range(5):
        client.simulate_get("/status.json", headers={"Authorization": "Bearer wrong"})  # 401 before routing
        client.simulate_get("/status")
    client.simulate_get("/info", headers={"Authorization": "Bearer wrong"})  # the cluster's 401: counted
    later = eventually(lambda: (h := client.simulate_get("/status.json").json["history"])["t"][before:] and h,
                       "a sample after the requests", timeout=20)
    assert sum(v or 0 for v in later["client_errors_per_s"][before - 1:]) > 0
    # one 401 in about an interval, not eleven: at most one a sample's time, since every sample covers at least one
    assert sum(later["client_errors_per_s"][before - 1:]) <= 1.0 / INTERVAL


def test_the_data_shows_the_cluster_and_texts_served(served) -> None:
    client, cluster = served
    assert client.simulate_post("/embed", json={"texts": [f"t{i}" for i in range(30)]}).status_code == 200

    def served_some() -> dict[str, Any] | None:
        body = client.simulate_get("/status.json").json
        return body if any(v for v in body["history"]["texts_per_s"] if v) else None

    body = eventually(served_some, "texts/s above zero in the history", timeout=20)
    assert body["status"] == "ok" and body["model_id"] == "fake/fake-model" and body["dim"] == 8
    assert body["limits"]["max_texts"] == 50 and body["version"]
    assert body["interval"] == INTERVAL and body["window"] == 600.0
    [row] = body["workers"]
    assert row["id"] == cluster.workers[0].loop.worker_id and row["state"] in ("ready", "busy")
    assert row["served_texts"] >= 30 and row["remote"] is False
    assert any(e["kind"] == "worker_joined" for e in body["events"])
    assert max(v or 0 for v in body["history"]["ok_per_s"]) > 0  # the /embed request counted
    assert any(v for v in body["history"]["p50_ms"] if v)

    # the uptime (seconds, to 0.1) runs with the clock: between two reads it grows by no more than passed
    def uptime() -> float:
        return client.simulate_get("/status.json").json["uptime_s"]

    start = time.monotonic()
    first = uptime()
    second = eventually(lambda: (u := uptime()) >= first + 0.2 and u, "the uptime grew", timeout=10)
    assert second - first <= time.monotonic() - start + 0.1, (first, second)


def test_a_refused_worker_is_an_event_through_the_real_broker(make_cluster) -> None:
    cluster = make_cluster(models=parse_models("fake/fake-model"))
    cluster.add_worker()
    other = cluster.add_worker(FakeEmbedder(model_id="other/other-model"), wait=False)
    other.thread.join(timeout=15)
    assert other.exit_code == 3
    client = falcon.testing.TestClient(create_app(cluster.client, LIMITS, history_interval=INTERVAL))

    def refused() -> list[dict[str, Any]]:
        return [e for e in client.simulate_get("/status.json").json["events"] if e["kind"] == "worker_refused"]

    [event] = eventually(refused, "the refusal in the status page's events")
    assert event["worker"] == other.loop.worker_id and "other-model" in event["text"]
    [row] = client.simulate_get("/status.json").json["workers"]  # the refused one never had a row
    assert row["id"] == cluster.workers[0].loop.worker_id
