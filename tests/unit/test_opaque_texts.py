"""Texts cross the broker as an opaque frame: the broker counts them from the header and passes the frame on
unread; only the worker reads it, and answers a frame that does not hold ``n`` strings with BAD_REQUEST."""

from __future__ import annotations

import msgpack
import pytest

from embed_common import protocol
from embed_common.protocol import Command, ProtocolError
from tests.unit.test_broker import ready_header

SUBMIT = {"job": "j1", "n": 2, "normalize": True, "timeout_ms": 60_000}


def test_a_texts_frame_decodes_to_its_texts() -> None:
    message = protocol.decode(protocol.encode(Command.SUBMIT, SUBMIT, protocol.encode_texts(["ä", ""])))
    assert message.text_count() == 2 and message.texts() == ["ä", ""]


@pytest.mark.parametrize(("header", "payload"), [
    (SUBMIT, ()),  # n without a frame
    ({**SUBMIT, "n": -1}, (b"\x90",)),
    ({**SUBMIT, "n": True}, (b"\x90",)),
    ({**{k: v for k, v in SUBMIT.items() if k != "n"}, "texts": ["a"]}, (b"\x90",)),  # texts in the header: gone
])
def test_a_malformed_texts_form_is_refused_at_decode(header: dict, payload: tuple[bytes, ...]) -> None:
    with pytest.raises(ProtocolError):
        protocol.decode(protocol.encode(Command.SUBMIT, header, *payload))


@pytest.mark.parametrize("frame", [b"\xc1", msgpack.packb(["one"]), msgpack.packb(["a", 2]), msgpack.packb("ab")])
def test_a_frame_that_is_not_n_strings_is_found_by_whoever_reads_it(frame: bytes) -> None:
    message = protocol.decode(protocol.encode(Command.JOB, {"job": "j", "attempt": 0, "n": 2, "normalize": True},
                                              frame))
    assert message.text_count() == 2  # counting never reads the frame
    with pytest.raises(ProtocolError):
        message.texts()


def test_the_broker_passes_the_frame_on_unread_and_the_worker_refuses_a_bad_one(make_cluster) -> None:
    cluster = make_cluster()
    raw_worker = cluster.peer("worker")
    raw_worker.send(Command.READY, ready_header("raw"))
    assert raw_worker.recv().command is Command.WELCOME
    front = cluster.peer("client")
    garbage = b"\xc1 not msgpack"
    front.send(Command.SUBMIT, SUBMIT, garbage)
    job = raw_worker.recv()
    assert job.command is Command.JOB and job.header["n"] == 2 and job.payload == [garbage]

    worker = cluster.add_worker()  # a real worker loop: it reads the frame, and says what is wrong
    raw_worker.close()
    probed = list(worker.embedder.batches)  # the probe it encodes at start-up
    front.send(Command.SUBMIT, {**SUBMIT, "job": "j2"}, msgpack.packb(["only one"]))
    error = front.recv(skip=(Command.HEARTBEAT, Command.STATUS))
    assert error.command is Command.ERROR and error.header["job"] == "j2"
    assert error.header["code"] == "BAD_REQUEST" and "2 texts" in error.header["message"]
    assert worker.embedder.batches == probed  # nothing of the job was encoded
