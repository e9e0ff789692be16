"""The broker with real workers and a real front link, in one process over inproc:// sockets."""

from __future__ import annotations

import threading
from concurrent.futures import Future

import numpy as np
import pytest

from embed_common import protocol
from embed_common.models import parse_models
from embed_common.protocol import PROTOCOL, Command, ErrorCode
from http_front.errors import ApiError
from tests.unit.inproc import SILENCE_KILLS_SOONER, CrashingWorkerLoop, InprocCluster, fake_vectors
from worker.embedder import PROBE_TEXTS, FakeEmbedder

TEXTS = [f"text {i} " + "word " * (i % 7) for i in range(150)]  # three jobs of at most 64 texts


def embed_in_background(cluster: InprocCluster, texts: list[str], timeout: float = 30.0) -> Future:
    """``client.embed`` on a thread (it blocks until answered); the future holds its result or error."""
    future: Future = Future()

    def run() -> None:
        try:
            future.set_result(cluster.client.embed(texts, True, timeout))
        except Exception as exc:
            future.set_exception(exc)

    threading.Thread(target=run, name="request", daemon=True).start()
    return future


def ready_header(worker_id: str, dim: int = 8, **extra: object) -> dict[str, object]:
    return {"model": "fake/fake-model", "dim": dim, "device": "cpu", "capacity": 64, "worker_id": worker_id,
            **extra}


def test_results_come_back_in_order_and_equal_the_embedders_vectors(make_cluster) -> None:
    cluster = make_cluster()
    cluster.add_worker()
    result = cluster.client.embed(TEXTS, True, 30)
    assert result.vectors.shape == (len(TEXTS), 8)
    np.testing.assert_allclose(result.vectors, fake_vectors(TEXTS), rtol=1e-6)
    raw = cluster.client.embed(TEXTS, False, 30)
    np.testing.assert_allclose(raw.vectors, fake_vectors(TEXTS, normalize=False), rtol=1e-6)
    assert not np.allclose(np.linalg.norm(raw.vectors, axis=1), 1.0)


def test_jobs_are_spread_over_two_workers(make_cluster) -> None:
    cluster = make_cluster()
    first, second = cluster.add_worker(capacity=64), cluster.add_worker(capacity=64)
    texts = [f"spread {i}" for i in range(64 * 8)]
    np.testing.assert_allclose(cluster.client.embed(texts, True, 30).vectors, fake_vectors(texts), rtol=1e-6)
    status = cluster.wait_status(lambda s: sum(w["served_texts"] for w in s["workers"]) == len(texts),
                                 "every text counted as served")
    served = {w["id"]: w["served_texts"] for w in status["workers"]}
    assert served[first.loop.worker_id] > 0 and served[second.loop.worker_id] > 0, served


def test_a_worker_that_dies_silently_has_its_jobs_requeued_and_answered_by_another(make_cluster) -> None:
    cluster = make_cluster(**SILENCE_KILLS_SOONER)
    # slow enough that it still holds its job when it dies
    dying = cluster.add_worker(FakeEmbedder(), loop_class=CrashingWorkerLoop)
    dying.embedder.delay_per_token = 0.03  # from now on: its start-up probe went at full speed
    request = embed_in_background(cluster, TEXTS[:64])
    cluster.wait_status(lambda s: any(w["inflight_texts"] for w in s["workers"]), "the job is on the worker")
    assert isinstance(dying.loop, CrashingWorkerLoop)
    dying.loop.crash()  # no DISCONNECT: the broker can only notice the missing heartbeats
    survivor = cluster.add_worker()
    result = request.result(timeout=30)
    np.testing.assert_allclose(result.vectors, fake_vectors(TEXTS[:64]), rtol=1e-6)
    status = cluster.wait_status(lambda s: len(s["workers"]) == 1 and s["counters"]["answered"] == 1,
                                 "the dead worker purged, the job answered")
    assert status["workers"][0]["id"] == survivor.loop.worker_id
    assert status["counters"]["requeued"] == 1


def test_a_late_reply_from_an_earlier_attempt_is_dropped(make_cluster) -> None:
    cluster = make_cluster(no_worker_grace=60.0, **SILENCE_KILLS_SOONER)
    worker = cluster.peer("worker")
    worker.send(Command.READY, ready_header("raw"))
    assert worker.recv().command is Command.WELCOME
    texts = ["late", "reply"]
    request = embed_in_background(cluster, texts)
    job = worker.recv()
    assert job.command is Command.JOB and job.header["attempt"] == 0 and job.texts() == texts
    job_id = job.header["job"]
    wrong = np.full((2, 8), 7.0, dtype=np.float32)
    worker.send(Command.RESULT, {"job": job_id, "attempt": 5, "n": 2, "dim": 8}, protocol.encode_vectors(wrong))

    # The worker falls silent; the broker presumes it dead and requeues the job; the worker comes back.
    cluster.wait_status(lambda s: not s["workers"] and s["counters"]["requeued"] == 1, "worker purged")
    worker.recv_nothing(0.05, skip=(Command.HEARTBEAT,))  # while it was silent, the broker sent only heartbeats
    worker.send(Command.HEARTBEAT, {})
    assert worker.recv().command is Command.DISCONNECT  # "unknown worker; register again"
    worker.send(Command.READY, ready_header("raw"))
    assert worker.recv().command is Command.WELCOME
    again = worker.recv()
    assert again.command is Command.JOB and again.header["job"] == job_id and again.header["attempt"] == 1

    # The first attempt's reply arrives late: dropped. The current attempt's reply is the answer.
    worker.send(Command.RESULT, {"job": job_id, "attempt": 0, "n": 2, "dim": 8}, protocol.encode_vectors(wrong))
    right = fake_vectors(texts)
    worker.send(Command.RESULT, {"job": job_id, "attempt": 1, "n": 2, "dim": 8}, protocol.encode_vectors(right))
    np.testing.assert_array_equal(request.result(timeout=30).vectors, right)
    status = cluster.wait_status(lambda s: s["counters"]["answered"] == 1, "one answer")
    assert status["counters"]["failed"] == 0


def test_cancel_removes_a_queued_job(make_cluster) -> None:
    cluster = make_cluster(no_worker_grace=60.0)
    front = cluster.peer("client")
    front.send(Command.SUBMIT, {"job": "j1", "n": 2, "normalize": True, "timeout_ms": 60_000},
               protocol.encode_texts(["a", "b"]))
    cluster.wait_status(lambda s: s["queue_jobs"] == 1, "the job queued")
    front.send(Command.CANCEL, {"job": "j1"})
    status = cluster.wait_status(lambda s: s["queue_jobs"] == 0, "the job cancelled")
    assert status["counters"]["submitted"] == 1 and status["counters"]["failed"] == 0
    worker = cluster.add_worker()
    probe_only = list(worker.embedder.batches)  # the worker encodes its probe before it registers
    front.recv_nothing(0.1, skip=())  # neither a result nor an error: the job is gone (5 heartbeats' turns)
    assert worker.embedder.batches == probe_only


def test_overloaded_when_the_queue_is_full(make_cluster) -> None:
    cluster = make_cluster(max_queue_texts=100, no_worker_grace=60.0)
    with pytest.raises(ApiError) as refused:
        cluster.client.embed([f"t{i}" for i in range(200)], True, 30)  # 64 queue; the next 64 do not fit
    assert refused.value.code == ErrorCode.OVERLOADED.value and refused.value.status == 503
    # jobs of 64, 64, 64 and 8 texts: the first and last fit, the middle two are refused; the request's
    # refusal cancels the two queued ones
    cluster.wait_status(lambda s: s["counters"]["failed"] == 2 and s["counters"]["submitted"] == 2
                        and s["queue_jobs"] == 0, "two jobs refused, the two queued ones cancelled")


def test_no_workers_before_any_registers_and_after_the_last_leaves(make_cluster) -> None:
    cluster = make_cluster(no_worker_grace=0.0)
    cluster.wait_status(lambda s: True, "a status")
    with pytest.raises(ApiError) as before:
        cluster.client.embed(["x"], True, 30)
    assert before.value.code == "NO_WORKERS" and "registered yet" in before.value.message
    worker = cluster.add_worker()
    assert cluster.client.embed(["x"], True, 30).vectors.shape == (1, 8)
    worker.loop.stop()  # a clean exit: DISCONNECT
    cluster.wait_status(lambda s: not s["workers"], "the worker gone")
    with pytest.raises(ApiError) as after:
        cluster.client.embed(["x"], True, 30)
    assert after.value.code == "NO_WORKERS" and after.value.message == "no worker is alive"
    assert worker.exit_code == 0


def test_a_worker_serving_another_model_is_refused(make_cluster) -> None:
    cluster = make_cluster(models=parse_models("fake/fake-model"))
    other = cluster.add_worker(FakeEmbedder(model_id="other/other-model"), wait=False)
    other.thread.join(timeout=15)
    assert other.exit_code == 3  # ExitCode.REFUSED (embed_common/exits.py): restarting will not help
    assert "fake-model" in (other.loop.refused or "") and "other-model" in (other.loop.refused or "")
    assert [kind for kind, _ in other.events] == ["worker_refused"]
    cluster.add_worker()  # the right model is welcome
    wider = cluster.add_worker(FakeEmbedder(dim=16), wait=False)  # same name, another dimension
    wider.thread.join(timeout=15)
    assert wider.exit_code == 3 and "16 dimensions" in (wider.loop.refused or "")
    impostor = cluster.peer("worker")  # same name and dimension, but other vectors
    opposite = -fake_vectors(PROBE_TEXTS[:2]).mean(axis=0)[None, :]  # the opposite of the cluster's probe
    impostor.send(Command.READY, ready_header("impostor", probe=protocol.encode_vectors(opposite)))
    refusal = impostor.recv()
    assert refusal.command is Command.REFUSED and refusal.header["code"] == ErrorCode.MODEL_MISMATCH.value
    assert "differ" in refusal.header["message"]
    assert len(cluster.wait_status(lambda s: True, "a status")["workers"]) == 1


@pytest.mark.parametrize("options", [{"colour": "red"}, {"truncate": "no"}, {"chunk": {"tokens": 0}}, ["truncate"]])
def test_a_submit_with_bad_options_is_answered_bad_request_and_never_queued(make_cluster, options: object) -> None:
    cluster = make_cluster(no_worker_grace=60.0)
    front = cluster.peer("client")
    front.send(Command.SUBMIT, {"job": "opt", "n": 1, "normalize": True, "timeout_ms": 60_000, "options": options},
               protocol.encode_texts(["a"]))
    error = front.recv(skip=(Command.HEARTBEAT, Command.STATUS))
    assert error.command is Command.ERROR and error.header["job"] == "opt"
    assert error.header["code"] == "BAD_REQUEST" and "option" in error.header["message"]
    status = cluster.wait_status(lambda s: s["counters"]["failed"] == 1, "the job failed")
    assert status["queue_jobs"] == 0 and status["counters"]["submitted"] == 0


GARBAGE = [
    [b"hello"],
    [b"EC0", Command.SUBMIT.value, b"\x80"],
    [PROTOCOL, b"\x99", b"\x80"],
    [PROTOCOL, Command.SUBMIT.value, b"\xc1"],
    [PROTOCOL, Command.SUBMIT.value, b"\x93\x01\x02\x03"],  # a msgpack list, not a map
    protocol.encode(Command.SUBMIT, {"job": "j", "n": 1, "normalize": True},  # no timeout_ms
                    protocol.encode_texts(["a"])),
    protocol.encode(Command.SUBMIT, {"job": "j", "n": 1, "normalize": True, "timeout_ms": True},
                    protocol.encode_texts(["a"])),
    protocol.encode(Command.READY, ready_header("not-a-client-command")),
]


def test_garbage_frames_are_counted_and_dropped_and_the_broker_keeps_serving(make_cluster) -> None:
    cluster = make_cluster()
    front, worker_side = cluster.peer("client"), cluster.peer("worker")
    for frames in GARBAGE:
        front.send_raw(frames)
    worker_side.send_raw([b"hello"])
    worker_side.send_raw(protocol.encode(Command.RESULT, {"job": "j", "attempt": 0, "n": 2, "dim": 8}, b"\0" * 4))
    expected = len(GARBAGE) + 2
    cluster.wait_status(lambda s: s["counters"]["dropped_frames"] == expected, f"{expected} frames dropped")
    front.recv_nothing(0.05, skip=())  # garbage is not answered
    cluster.add_worker()
    np.testing.assert_allclose(cluster.client.embed(TEXTS, True, 30).vectors, fake_vectors(TEXTS), rtol=1e-6)
    cluster.wait_status(lambda s: s["counters"]["answered"] == 3 and s["counters"]["dropped_frames"] == expected,
                        "three jobs answered, nothing more dropped")


@pytest.mark.parametrize(("rows", "dim"), [(1, 8), (3, 8), (2, 4)])
def test_a_result_with_the_wrong_rows_or_dimension_is_an_error_not_an_answer(make_cluster, rows: int,
                                                                               dim: int) -> None:
    cluster = make_cluster(no_worker_grace=60.0)
    worker = cluster.peer("worker")
    worker.send(Command.READY, ready_header("raw"))
    assert worker.recv().command is Command.WELCOME
    request = embed_in_background(cluster, ["two", "texts"])
    job = worker.recv()
    assert job.command is Command.JOB
    wrong = np.ones((rows, dim), dtype=np.float32)
    worker.send(Command.RESULT, {"job": job.header["job"], "attempt": 0, "n": rows, "dim": dim},
                protocol.encode_vectors(wrong))
    with pytest.raises(ApiError) as caught:
        request.result(timeout=30)
    assert caught.value.code == "ENCODE_FAILED" and "wrongly" in caught.value.message
    status = cluster.wait_status(lambda s: s["counters"]["failed"] == 1, "one failure")
    assert status["counters"]["answered"] == 0
