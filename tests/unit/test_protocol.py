"""The wire protocol: every command round-trips, and anything else is a ProtocolError (never an assert,
a KeyError or msgpack's own exceptions), so that a receiver can log it, count it and keep going."""

from __future__ import annotations

import random
from typing import Any

import msgpack
import numpy as np
import pytest

from embed_common import protocol
from embed_common.protocol import (
    FIELDS,
    OPTION_ROWS,
    PROTOCOL,
    WITH_TEXTS,
    WITH_VECTORS,
    Command,
    JobOptions,
    ProtocolError,
)

VECTORS = np.arange(6, dtype=np.float32).reshape(2, 3) / 7
TEXTS = ["ünïcode", ""]

# A valid header for every command: its required fields plus the optional ones the parts really send.
VALID: dict[Command, dict[str, Any]] = {
    Command.READY: {"model": "org/model", "dim": 3, "device": "cpu", "capacity": 64, "worker_id": "w",
                    "probe": b"\x00" * 12, "pid": 42},
    Command.WELCOME: {"broker_id": "b1", "heartbeat_interval": 1.0, "heartbeat_liveness": 3},
    Command.REFUSED: {"code": "MODEL_MISMATCH", "message": "another model"},
    Command.JOB: {"job": "j1", "attempt": 0, "n": 2, "normalize": True, "options": {"truncate": False}},
    Command.RESULT: {"job": "j1", "n": 2, "dim": 3, "attempt": 0},
    Command.ERROR: {"job": "j1", "code": "ENCODE_FAILED", "message": "boom"},
    Command.HEARTBEAT: {"stats": {"texts_done": 3}},
    Command.DISCONNECT: {},
    Command.SUBMIT: {"job": "j1", "n": 2, "normalize": False, "timeout_ms": 30_000},
    Command.CANCEL: {"job": "j1"},
    Command.STATUS: {"req": 7},
    Command.WORKER_GONE: {"pid": 4242, "host": "box"},
    Command.WORKERS_DOWN: {"workers": [{"id": "worker-1", "state": "failed", "reason": "crash loop"}]},
}


def payload_of(command: Command) -> list[bytes]:
    """The payload frames of a valid message of ``command``."""
    if command in WITH_VECTORS:
        return [protocol.encode_vectors(VECTORS)]
    return [protocol.encode_texts(TEXTS)] if command in WITH_TEXTS else []


def test_every_command_has_a_valid_example() -> None:
    assert set(VALID) == set(Command) == set(FIELDS)


@pytest.mark.parametrize("command", list(Command), ids=lambda c: c.name)
def test_round_trip(command: Command) -> None:
    frames = protocol.encode(command, VALID[command], *payload_of(command))
    assert frames[0] == PROTOCOL and frames[1] == command.value
    message = protocol.decode(frames)
    assert message.command is command
    assert message.header == VALID[command]
    if command in WITH_VECTORS:
        assert message.vectors().dtype == np.float32
        np.testing.assert_array_equal(message.vectors(), VECTORS)
    elif command in WITH_TEXTS:
        assert message.text_count() == len(TEXTS) and message.texts() == TEXTS
    else:
        assert message.payload == []


def test_vectors_travel_as_raw_little_endian_float32() -> None:
    data = protocol.encode_vectors(VECTORS.astype(np.float64))  # any float input is sent as <f4
    assert len(data) == VECTORS.size * 4
    np.testing.assert_array_equal(np.frombuffer(data, dtype="<f4").reshape(2, 3), VECTORS)


def frames_with(command: Command, header: Any, *payload: bytes) -> list[bytes]:
    return [PROTOCOL, command.value, msgpack.packb(header, use_bin_type=True), *payload]


def without(command: Command, name: str) -> dict[str, Any]:
    return {k: v for k, v in VALID[command].items() if k != name}


TEXTS_FRAME = payload_of(Command.SUBMIT)
BAD: dict[str, list[bytes]] = {
    "no frames": [],
    "two frames": [PROTOCOL, Command.HEARTBEAT.value],
    "wrong tag": [b"EC0", Command.HEARTBEAT.value, msgpack.packb({})],
    "empty tag": [b"", Command.HEARTBEAT.value, msgpack.packb({})],
    "unknown command": [PROTOCOL, b"\x7f", msgpack.packb({})],
    "two-byte command": [PROTOCOL, Command.JOB.value * 2, msgpack.packb({})],
    "empty command": [PROTOCOL, b"", msgpack.packb({})],
    "header not msgpack": [PROTOCOL, Command.HEARTBEAT.value, b"\xc1"],
    "header truncated": [PROTOCOL, Command.STATUS.value, msgpack.packb({"req": 1})[:-1]],
    "header with trailing bytes": [PROTOCOL, Command.STATUS.value, msgpack.packb({"req": 1}) + b"\x00"],
    "header empty": [PROTOCOL, Command.HEARTBEAT.value, b""],
    "header a list": frames_with(Command.HEARTBEAT, [1, 2]),
    "header a string": frames_with(Command.HEARTBEAT, "hello"),
    "header with int keys": frames_with(Command.STATUS, {1: 2, "req": 1}),
    "missing field": frames_with(Command.SUBMIT, without(Command.SUBMIT, "timeout_ms")),
    "field of another type": frames_with(Command.SUBMIT, {**VALID[Command.SUBMIT], "n": "2"}, *TEXTS_FRAME),
    "bool for an int": frames_with(Command.SUBMIT, {**VALID[Command.SUBMIT], "timeout_ms": True}, *TEXTS_FRAME),
    "int for a bool": frames_with(Command.SUBMIT, {**VALID[Command.SUBMIT], "normalize": 1}, *TEXTS_FRAME),
    "float for an int": frames_with(Command.JOB, {**VALID[Command.JOB], "attempt": 0.0}, *TEXTS_FRAME),
    "texts in the header (the old form, gone)": frames_with(
        Command.SUBMIT, {**without(Command.SUBMIT, "n"), "texts": TEXTS}),
    "None for a str": frames_with(Command.CANCEL, {"job": None}),
    "bytes for a str": frames_with(Command.CANCEL, {"job": b"j1"}),
    "no vectors frame": frames_with(Command.RESULT, VALID[Command.RESULT]),
    "short vectors frame": frames_with(Command.RESULT, VALID[Command.RESULT], b"\x00" * 20),
    "long vectors frame": frames_with(Command.RESULT, VALID[Command.RESULT], b"\x00" * 28),
    "two vectors frames": frames_with(Command.RESULT, VALID[Command.RESULT], b"\x00" * 24, b""),
    "negative n": frames_with(Command.RESULT, {**VALID[Command.RESULT], "n": -2, "dim": -3}, b"\x00" * 24),
    "bool dim": frames_with(Command.RESULT, {**VALID[Command.RESULT], "dim": True}, b"\x00" * 8),
}


@pytest.mark.parametrize("frames", list(BAD.values()), ids=list(BAD))
def test_garbage_is_a_protocol_error(frames: list[bytes]) -> None:
    with pytest.raises(ProtocolError):
        protocol.decode(frames)


def test_protocol_error_is_a_value_error() -> None:
    assert issubclass(ProtocolError, ValueError)  # callers that catch ValueError keep working


def test_extra_fields_are_allowed() -> None:
    message = protocol.decode(protocol.encode(Command.CANCEL, {"job": "j1", "reason": "client gone"}))
    assert message.header["reason"] == "client gone"


def mutations(rng: random.Random, frames: list[bytes]) -> list[bytes]:
    """A valid message with one random change: a flipped byte, a cut frame, a frame dropped, added or random."""
    frames = list(frames)
    i = rng.randrange(len(frames))
    change = rng.randrange(5)
    if change == 0 and frames[i]:
        data = bytearray(frames[i])
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        frames[i] = bytes(data)
    elif change == 1:
        frames[i] = frames[i][: rng.randrange(len(frames[i]) + 1)]
    elif change == 2:
        del frames[i]
    elif change == 3:
        frames.insert(i, rng.randbytes(rng.randrange(16)))
    else:
        frames[i] = rng.randbytes(rng.randrange(64))
    return frames


def test_random_damage_never_raises_anything_but_a_protocol_error() -> None:
    rng = random.Random(1234)
    valid = [protocol.encode(c, VALID[c], *payload_of(c)) for c in Command]
    decoded = rejected = 0
    for _ in range(20_000):
        frames = mutations(rng, rng.choice(valid))
        if rng.random() < 0.1:
            frames = [rng.randbytes(rng.randrange(32)) for _ in range(rng.randrange(6))]
        try:
            message = protocol.decode(frames)
        except ProtocolError:
            rejected += 1
            continue
        decoded += 1
        for name, kind in FIELDS[message.command].items():  # what decode accepts is what it promises
            assert isinstance(message.header[name], kind)
        if message.command in WITH_VECTORS:
            assert message.vectors().shape == (message.header["n"], message.header["dim"])
    assert decoded > 1000 and rejected > 1000, (decoded, rejected)


# -- job options: the one typed form of a SUBMIT's and a JOB's ``options`` map ----------------------------------

def test_default_options_send_no_map_and_an_absent_map_reads_as_the_defaults() -> None:
    assert JobOptions().wire() == {}
    assert JobOptions.read(None) == JobOptions.read({}) == JobOptions()


@pytest.mark.parametrize("name", list(OPTION_ROWS))
def test_every_option_row_round_trips_its_example_through_a_message(name: str) -> None:
    row = OPTION_ROWS[name]
    assert row.metadata["meaning"] and row.metadata["example"] != row.default
    options = JobOptions(**{name: row.metadata["example"]})
    wire = options.wire()
    assert list(wire) == [name]  # only what differs from the defaults travels
    header = {**VALID[Command.SUBMIT], "options": wire}
    message = protocol.decode(protocol.encode(Command.SUBMIT, header, *payload_of(Command.SUBMIT)))
    assert message.options() == options and getattr(message.options(), name) == row.metadata["example"]


def test_all_examples_together_round_trip() -> None:
    options = JobOptions(**{name: row.metadata["example"] for name, row in OPTION_ROWS.items()})
    assert JobOptions.read(msgpack.unpackb(msgpack.packb(options.wire()))) == options


@pytest.mark.parametrize(
    ("raw", "mentions"),
    [([], "map"), ("truncate", "map"), ({"colour": 1}, "unknown job option"), ({"truncate": "no"}, "truncate"),
     ({"truncate": 0}, "truncate"), ({"chunk": []}, "object"), ({"chunk": {"tokens": 0}}, "at least 1"),
     ({"chunk": {"tokens": True}}, "integer"), ({"chunk": {"overlap": -1}}, "overlap"),
     ({"chunk": {"pages": 2}}, "pages"), ({"encoding": "f16"}, "encoding"), ({"encoding": None}, "encoding")],
)
def test_bad_options_are_a_protocol_error_that_says_which(raw: object, mentions: str) -> None:
    with pytest.raises(ProtocolError, match=mentions):
        JobOptions.read(raw)
