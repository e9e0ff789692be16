"""The head's path for vectors: workers write the rows as JSON when a job asks (protocol Encoding.JSON), the
broker and the front pass that text on without reading or copying it, and the answer is the same JSON the
float32 path gives; a request's thread talks to the broker on a link of its own, and a reply that is not for
its request (a late one) is never taken as its answer."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator

import falcon
import falcon.testing
import numpy as np
import orjson
import pytest
import zmq

from embed_common import protocol
from embed_common.jobs import spread_parts
from embed_common.protocol import Command, Encoding, ProtocolError
from http_front import json_media
from http_front.broker_client import BrokerClient, EmbedResult
from http_front.errors import ApiError
from tests.unit.inproc import InprocCluster, fake_vectors

rng = np.random.default_rng(7)
AWKWARD = np.array([[0.0, -0.0, 1e-38, -3.4028235e38, 1.1754944e-38, 0.1, 1 / 3, -2.5e-7]], dtype=np.float32)


@pytest.mark.parametrize("vectors", [
    rng.standard_normal((5, 16)).astype(np.float32),
    AWKWARD,
    np.zeros((0, 16), np.float32),
], ids=["normal", "awkward values", "no rows"])
def test_json_rows_read_back_to_the_same_float32(vectors: np.ndarray) -> None:
    frames = protocol.encode(Command.RESULT, {"job": "j", "n": len(vectors), "dim": vectors.shape[1],
                                              "encoding": Encoding.JSON.value},
                             protocol.encode_vectors(vectors, Encoding.JSON))
    message = protocol.decode(frames)
    np.testing.assert_array_equal(message.vectors(), vectors)
    assert message.vectors().dtype == np.float32
    assert np.array_equal(np.asarray(orjson.loads(message.payload[0]), np.float32).reshape(vectors.shape),
                          vectors)  # plain JSON numbers, nothing else


@pytest.mark.parametrize(("n", "frame"), [
    (2, b""),
    (2, b"[]"),  # no rows where two are said
    (0, b"[[1.0]]"),  # rows where none are said
    (1, b"{\"a\": 1}"),
    (1, b"[[1.0]"),  # cut short
    (1, b"[[1.0]]]"[1:]),
])
def test_a_json_frame_that_is_not_an_array_of_rows_is_refused(n: int, frame: bytes) -> None:
    with pytest.raises(ProtocolError):
        protocol.decode(protocol.encode(Command.RESULT, {"job": "j", "n": n, "dim": 1, "encoding": "json"}, frame))


def test_an_unknown_encoding_is_refused() -> None:
    with pytest.raises(ProtocolError):
        protocol.decode(protocol.encode(Command.RESULT, {"job": "j", "n": 1, "dim": 1, "encoding": "f16"},
                                        b"\x00\x00"))


def test_a_job_that_asks_json_gets_its_rows_in_json_through_the_broker(make_cluster) -> None:
    cluster = make_cluster()
    cluster.add_worker()
    front = cluster.peer("client")
    texts = ["one", "two", "three"]
    for encoding in (None, "json"):
        options = {"encoding": encoding} if encoding else {}
        front.send(Command.SUBMIT, {"job": f"j-{encoding}", "n": 3, "normalize": True, "timeout_ms": 30_000,
                                    "options": options}, protocol.encode_texts(texts))
        reply = front.recv(skip=(Command.HEARTBEAT, Command.STATUS))
        assert reply.command is Command.RESULT and reply.header.get("encoding") == encoding
        if encoding:
            assert reply.payload[0].startswith(b"[[")
        np.testing.assert_allclose(reply.vectors(), fake_vectors(texts), rtol=1e-6)


def test_an_answer_is_the_same_json_whichever_way_its_parts_came() -> None:
    a = rng.standard_normal((3, 4)).astype(np.float32)
    b = rng.standard_normal((2, 4)).astype(np.float32)
    empty = np.zeros((0, 4), np.float32)
    mixed = EmbedResult(parts=[a, protocol.encode_vectors(b, Encoding.JSON), empty,
                               protocol.encode_vectors(empty, Encoding.JSON)], dims=[4, 4, 4, 4])
    both = np.concatenate([a, b])
    def read(data: bytes) -> np.ndarray:
        return np.asarray(orjson.loads(data), np.float32)

    np.testing.assert_array_equal(read(b"".join(bytes(p) for p in mixed.vectors_json())), both)
    np.testing.assert_array_equal(mixed.vectors, both)
    np.testing.assert_array_equal(read(orjson.dumps(mixed.rows_json())), both)
    assert EmbedResult(parts=[empty], dims=[4]).vectors_json() == [memoryview(b"[]")]


def test_pieces_read_as_one_file_without_joining() -> None:
    pieces = [b'{"a":', memoryview(b"[[1,2],[3]]"), b"", b"}"]
    body = json_media.Pieces(pieces)
    assert body.seekable() and body.tell() == 0 and body.size == 17
    assert bytes(body.read(3)) == b'{"a'
    assert bytes(body.read()) == b'":'  # the rest of that piece
    assert bytes(body.read(100)) == b"[[1,2],[3]]"
    assert body.seek(-1, io.SEEK_END) == 16 and bytes(body.read()) == b"}" and body.read() == b""
    body.seek(2)
    body.seek(3, io.SEEK_CUR)
    assert bytes(body.read(4)) == b"[[1,"


@pytest.mark.parametrize("rows", [1, 200], ids=["small: bytes", "large: a stream"])
def test_answer_adds_the_rows_to_the_rest_of_the_answer(rows: int) -> None:
    vectors = rng.standard_normal((rows, 64)).astype(np.float32)

    class Rows:
        def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
            json_media.answer(resp, {"truncated": [0]}, "vectors",
                              [memoryview(protocol.encode_vectors(vectors, Encoding.JSON))])

    app = falcon.App()
    app.add_route("/rows", Rows())
    r = falcon.testing.TestClient(app).simulate_get("/rows")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    assert int(r.headers["content-length"]) == len(r.content)
    assert set(r.json) == {"truncated", "vectors"} and r.json["truncated"] == [0]
    np.testing.assert_array_equal(np.asarray(r.json["vectors"], np.float32), vectors)


def test_a_request_is_spread_only_over_workers_not_kept_busy() -> None:
    assert [spread_parts(4, busy) for busy in (0, 1, 3, 4, 40)] == [4, 3, 1, 1, 1]
    assert spread_parts(1, 0) == 1 and spread_parts(0, 0) == 1


def test_under_load_a_request_stays_one_job(monkeypatch: pytest.MonkeyPatch) -> None:
    cluster = InprocCluster()
    try:
        cluster.add_worker(), cluster.add_worker()
        cluster.wait_status(lambda s: len(s["workers"]) == 2, "two workers in the front's status")
        sent: list[int] = []
        submit = cluster.client._submit

        def counting_submit(texts: list[str], *args: object) -> object:  # a spy on the real method
            sent.append(len(texts))
            return submit(texts, *args)

        monkeypatch.setattr(cluster.client, "_submit", counting_submit)
        texts = [f"text {i}" for i in range(32)]
        cluster.client.embed(texts, True, 30.0)
        assert sent == [16, 16]  # idle: shared by both
        sent.clear()
        monkeypatch.setattr(cluster.client, "pending_jobs", lambda: 2)  # both kept busy by other requests
        result = cluster.client.embed(texts, True, 30.0)
        assert sent == [32]
        np.testing.assert_allclose(result.vectors, fake_vectors(texts), rtol=1e-6)
    finally:
        cluster.close()


@pytest.fixture()
def raw_broker() -> Iterator[tuple[zmq.Socket, BrokerClient]]:
    """A BrokerClient talking to a ROUTER the test answers by hand."""
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.bind("inproc://raw-broker")
    client = BrokerClient("inproc://raw-broker", context=context, status_interval=60)
    yield router, client
    client.close()
    router.close()
    context.term()


def next_submit(router: zmq.Socket) -> tuple[bytes, protocol.Message]:
    while True:
        assert router.poll(5000), "no message from the client"
        identity, *frames = router.recv_multipart()
        message = protocol.decode(frames)
        if message.command is Command.SUBMIT:
            return identity, message


def reply(router: zmq.Socket, identity: bytes, job: str, vectors: np.ndarray) -> None:
    router.send_multipart([identity, *protocol.encode(Command.RESULT, {"job": job, "n": len(vectors),
                                                                       "dim": vectors.shape[1]},
                                                      protocol.encode_vectors(vectors))])


def test_a_late_reply_on_a_reused_link_is_not_the_next_requests_answer(raw_broker) -> None:
    router, client = raw_broker
    with pytest.raises(ApiError) as timeout:
        client.embed(["first"], True, 0.05)  # nobody answers in time
    assert timeout.value.code == "TIMEOUT"
    identity, first = next_submit(router)
    answers: list[EmbedResult] = []
    second = threading.Thread(target=lambda: answers.append(client.embed(["second"], True, 10)))
    second.start()
    same_link, message = next_submit(router)
    assert same_link == identity  # the link went back to the pool, and the next request took it
    reply(router, identity, first.header["job"], np.full((1, 2), 1.0, np.float32))  # late: for the first
    reply(router, identity, message.header["job"], np.full((1, 2), 2.0, np.float32))
    second.join(10)
    assert len(answers) == 1 and answers[0].vectors.tolist() == [[2.0, 2.0]]
    assert client.pending_jobs() == 0


def test_close_leaves_a_waiting_requests_link_to_it(raw_broker) -> None:
    router, client = raw_broker
    errors: list[ApiError] = []

    def request() -> None:
        try:
            client.embed(["waits"], True, 0.2)
        except ApiError as exc:
            errors.append(exc)

    waiting = threading.Thread(target=request)
    waiting.start()
    next_submit(router)
    client.close()  # the request still polls its link: closing it under it would be a libzmq error
    waiting.join(10)
    assert [e.code for e in errors] == ["TIMEOUT"]  # its own answer, not a socket error
    assert client._free == [] and not client._busy  # and its link was closed when it gave it back
