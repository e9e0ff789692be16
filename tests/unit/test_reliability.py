"""Reliability pieces in process: what the supervisor tells the broker (WORKER_GONE, WORKERS_DOWN), the broker
waiting for a worker that is being restarted, the supervisor's backoff and failed state, and the front's
abort at shutdown. The broker runs for real over inproc:// (tests/unit/inproc.py)."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import time
from collections.abc import Iterator
from concurrent.futures import Future

import numpy as np
import pytest
import zmq

from embed_common import protocol
from embed_common.protocol import Command
from http_front.errors import ApiError
from supervisor.broker_link import BrokerLink
from supervisor.supervisor import FAILED_AFTER, Child, ClusterSettings, Supervisor
from tests.unit.inproc import CrashingWorkerLoop, eventually, fake_vectors
from tests.unit.test_broker import embed_in_background
from worker.embedder import FakeEmbedder


def down(worker_id: str, state: str) -> dict[str, object]:
    return {"id": worker_id, "state": state, "reason": "test", "restart_in": 1.0}


def test_workers_down_shows_in_the_status_until_that_worker_registers(make_cluster) -> None:
    cluster = make_cluster()
    supervisor = cluster.peer("client")
    supervisor.send(Command.WORKERS_DOWN, {"workers": [down("w0", "restarting"), down("gone", "failed")]})
    status = cluster.wait_status(lambda s: len(s["workers_down"]) == 2, "the report in the status")
    assert {w["id"]: w["state"] for w in status["workers_down"]} == {"w0": "restarting", "gone": "failed"}
    cluster.add_worker()  # registers as w0: it serves, so it is no longer down
    status = cluster.wait_status(lambda s: len(s["workers_down"]) == 1, "w0 serves again")
    assert status["workers_down"][0]["id"] == "gone"
    supervisor.send(Command.WORKERS_DOWN, {"workers": []})
    cluster.wait_status(lambda s: s["workers_down"] == [], "an empty report clears it")


def test_a_restarting_worker_holds_queued_jobs_past_the_no_worker_grace(make_cluster) -> None:
    cluster = make_cluster(no_worker_grace=0.05)
    first = cluster.add_worker()
    first.loop.stop()  # leaves cleanly: the cluster has no worker now
    cluster.wait_status(lambda s: not s["workers"], "no worker")
    supervisor = cluster.peer("client")
    supervisor.send(Command.WORKERS_DOWN, {"workers": [down("w1", "restarting")]})
    cluster.wait_status(lambda s: s["workers_down"], "the report")
    time.sleep(0.1)  # past the grace (time must pass: nothing to wait on)
    request = embed_in_background(cluster, ["waits for the restart"])
    cluster.wait_status(lambda s: s["queue_jobs"] == 1 or request.done(), "the request's job in the broker's queue")
    time.sleep(0.1)  # 5 turns of the broker's loop (0.02 s each) since: a job failed NO_WORKERS would be gone
    assert not request.done(), "failed while a worker was restarting"
    cluster.add_worker()  # w1 is back
    np.testing.assert_allclose(request.result(timeout=30).vectors, fake_vectors(["waits for the restart"]),
                               rtol=1e-6)


def test_with_only_failed_workers_no_workers_comes_at_once(make_cluster) -> None:
    cluster = make_cluster(no_worker_grace=0.05)
    first = cluster.add_worker()
    first.loop.stop()
    cluster.wait_status(lambda s: not s["workers"], "no worker")
    supervisor = cluster.peer("client")
    supervisor.send(Command.WORKERS_DOWN, {"workers": [down("w0", "failed")]})
    cluster.wait_status(lambda s: s["workers_down"], "the report")
    time.sleep(0.1)  # past the grace (time must pass: nothing to wait on); a failed worker does not extend it
    with pytest.raises(ApiError) as error:
        cluster.client.embed(["nobody will serve this"], True, 30)
    assert error.value.code == "NO_WORKERS"


def test_worker_gone_requeues_the_jobs_of_that_local_process_only(make_cluster) -> None:
    cluster = make_cluster(no_worker_grace=60.0)
    # slow, and never heard from again once crashed: only WORKER_GONE can tell the broker early
    dying = cluster.add_worker(FakeEmbedder(), loop_class=CrashingWorkerLoop)
    dying.embedder.delay_per_token = 0.05  # from now on: its start-up probe went at full speed
    texts = [f"text {i} with a few words" for i in range(20)]
    request = embed_in_background(cluster, texts)
    cluster.wait_status(lambda s: any(w["inflight_texts"] for w in s["workers"]), "the job is on the worker")
    assert isinstance(dying.loop, CrashingWorkerLoop)
    supervisor = cluster.peer("client")
    supervisor.send(Command.WORKER_GONE, {"pid": os.getpid(), "host": "another-host"})  # not ours: ignored
    supervisor.send(Command.WORKER_GONE, {"pid": os.getpid() + 1, "host": socket.gethostname()})  # ditto
    supervisor.send(Command.STATUS, {"req": 1})  # answered after the two above: the broker reads in order
    answer = supervisor.recv(skip=(Command.HEARTBEAT,))
    assert answer.command is Command.STATUS and answer.header["workers"], "removed a worker of another host or pid"
    dying.loop.crash()
    supervisor.send(Command.WORKER_GONE, {"pid": os.getpid(), "host": socket.gethostname()})
    status = cluster.wait_status(lambda s: not s["workers"] and s["counters"]["requeued"] >= 1, "requeued")
    assert status["counters"]["requeued"] == 1  # the one job of the request, once
    cluster.add_worker()
    np.testing.assert_allclose(request.result(timeout=30).vectors, fake_vectors(texts), rtol=1e-6)


def test_abort_answers_every_waiting_job_once(make_cluster) -> None:
    cluster = make_cluster(no_worker_grace=60.0)  # no worker: the jobs wait in the queue
    requests_: list[Future] = [embed_in_background(cluster, [f"t{i}"] * 70) for i in range(3)]  # 2 jobs each
    eventually(lambda: cluster.client.pending_jobs() == 6, "six jobs pending")
    assert cluster.client.abort("SHUTTING_DOWN", "stopping") == 6
    for request in requests_:
        with pytest.raises(ApiError) as error:
            request.result(timeout=30)
        assert error.value.code == "SHUTTING_DOWN"
    assert cluster.client.abort("SHUTTING_DOWN", "again") == 0
    cluster.add_worker()  # the broker still holds the queued jobs: their replies come late and are ignored
    assert len(cluster.client.embed(["still works"], True, 30).vectors) == 1


def test_broker_link_sends_the_down_list_on_change_and_resends_it_while_not_empty() -> None:
    context = zmq.Context()
    try:
        broker = context.socket(zmq.ROUTER)
        broker.setsockopt(zmq.LINGER, 0)
        address = "inproc://link"
        broker.bind(address)
        now = [1000.0]
        link = BrokerLink(context, address, resend=0.3, clock=lambda: now[0])

        def received(timeout: float) -> list[protocol.Message]:
            """What came within ``timeout``, and any more that follows within 0.02 s (inproc delivers at once)."""
            out = []
            while broker.poll(int(timeout * 1000)):
                out.append(protocol.decode(broker.recv_multipart()[1:]))
                timeout = 0.02
            return out

        link.workers_down([])  # empty and unchanged: nothing to say
        assert received(0.05) == []
        report = [down("worker-1", "failed")]
        link.workers_down(report)
        [message] = received(0.2)
        assert message.command is Command.WORKERS_DOWN and message.header["workers"] == report
        link.workers_down(report)  # unchanged, sent a moment ago
        now[0] += 0.2
        link.workers_down(report)  # unchanged, sent 0.2 s ago: within the resend interval
        assert received(0.05) == []
        now[0] += 0.15  # past the resend interval
        link.workers_down(report)  # unchanged, but a restarted broker would not know it
        assert len(received(0.2)) == 1
        link.workers_down([])  # changed: cleared once
        assert received(0.2)[0].header["workers"] == []
        link.worker_gone(4242)
        [gone] = received(0.2)
        assert gone.header == {"pid": 4242, "host": socket.gethostname()}
        link.close()
        broker.close()
    finally:
        context.term()


@pytest.fixture
def supervisor() -> Iterator[tuple[Supervisor, io.StringIO]]:
    out = io.StringIO()
    sup = Supervisor(ClusterSettings(workers="1"), stdout=out)
    yield sup, out
    sup.broker_link.close()
    sup.context.term()
    shutil.rmtree(sup.rundir, ignore_errors=True)


def events(out: io.StringIO) -> list[dict]:
    return [json.loads(line.removeprefix("PROGRESS:")) for line in out.getvalue().splitlines()]


def test_quick_exits_back_off_doubling_then_the_worker_is_failed_and_retried_later(supervisor) -> None:
    sup, out = supervisor
    child = Child("worker-0", ["true"], "worker", "cpu")
    now = time.monotonic()
    for i in range(FAILED_AFTER + 2):
        child.started_at, child.starts = now, i + 1
        sup.on_exit(child, 1, now + 0.5)  # a quick exit each time
        assert child.restart_at is not None  # always retried, even when failed
        now = child.restart_at
    exited = [e["data"] for e in events(out) if e["type"] == "worker_exited"]
    assert [e["restart_in"] for e in exited] == [1, 2, 4, 8, 16, 30, 30]
    [failed] = [e["data"] for e in events(out) if e["type"] == "worker_failed"]
    assert failed["reason"] == "crash loop" and failed["failures"] == FAILED_AFTER and failed["retry_in"] == 16
    assert child.down is not None and child.down["state"] == "failed" and child.down["reason"].startswith("crash")
    # it comes back: no longer down; a later quick exit still counts towards the loop
    sup.on_event(child, {"type": "worker_ready", "data": {"worker": "worker-0"}})
    assert child.down is None and not child.failed


def test_a_healthy_minute_resets_the_backoff_and_a_refused_worker_is_not_restarted(supervisor) -> None:
    sup, out = supervisor
    child = Child("worker-0", ["true"], "worker", "cpu", failures=3, starts=4)
    now = time.monotonic()
    child.started_at = now - 61
    sup.on_exit(child, -9, now)
    assert child.failures == 0 and events(out)[-1]["data"]["restart_in"] == 1
    assert child.down is not None and child.down["state"] == "restarting"
    child.started_at, child.restart_at = now, None  # as start() leaves it
    sup.on_exit(child, 3, now + 1)  # ExitCode.REFUSED: another model; restarting would not help
    assert child.restart_at is None  # not rescheduled
    assert child.down is not None and child.down["state"] == "failed" and child.down["restart_in"] is None


def test_health_lists_down_workers_and_the_front_refuses_input_it_cannot_send(make_cluster) -> None:
    import falcon.testing

    from http_front.app import create_app

    cluster = make_cluster()
    cluster.add_worker()
    app = falcon.testing.TestClient(create_app(cluster.client))
    cluster.peer("client").send(Command.WORKERS_DOWN, {"workers": [down("worker-1", "failed")]})
    health = eventually(lambda: (r := app.simulate_get("/health")).json["workers_down"] and r, "down in /health")
    assert health.status_code == 200 and health.json["status"] == "ok"  # another worker serves
    assert health.json["workers_down"][0] == down("worker-1", "failed")
    deep = app.simulate_post("/embed", body=b"[" * 50_000 + b"]" * 50_000, content_type="application/json")
    assert (deep.status_code, deep.json["error"]["code"]) == (400, "INVALID_JSON")
    lone = app.simulate_post("/embed", body=b'{"texts": ["ok", "\\udc80"]}', content_type="application/json")
    assert (lone.status_code, lone.json["error"]["code"]) == (400, "BAD_REQUEST")
    assert "texts[1]" in lone.json["error"]["message"]
    assert cluster.client.pending_jobs() == 0  # nothing left behind
