"""THE wire protocol of embed-cluster, imported by every part; nobody builds frames by hand.

A message is a list of ZeroMQ frames (a ROUTER socket adds the peer's identity in front):

    [PROTOCOL, command, header, *payload]

- ``PROTOCOL`` is the version tag ``b"EC1"``;
- ``command`` is one byte from :class:`Command`;
- ``header`` is a msgpack map whose fields are checked against :data:`FIELDS`;
- ``payload``: vectors travel as one frame in the :class:`Encoding` the RESULT's ``encoding`` names: raw
  little-endian float32, ``n * dim`` values (the default), or the rows as JSON text ``[[...],...]``, which a job
  asks for with the option ``{"encoding": "json"}`` (the front answers with it as it is, so that the head does
  no work per number). Texts (SUBMIT, JOB) travel as one msgpack frame that the broker passes on unread (it
  needs only the count ``n`` in the header).

Two conversations share the layout:

front <-> broker (the broker's *client* socket)
    SUBMIT  front -> broker   {job, n, normalize, timeout_ms, [model, options]} + texts (model: the pool's alias;
                              none: the default model)  (options: JobOptions.wire())
    RESULT  broker -> front   {job, n, dim, worker, [encoding, ...]} + vectors
    ERROR   broker -> front   {job, code, message, [indices, max_tokens]}  (INPUT_TOO_LONG: the job's indices)
    CANCEL  front -> broker   {job}
    STATUS  front -> broker   {req}  and broker -> front {req, broker_id, ...} (also the front's heartbeat)
    WORKER_GONE supervisor -> broker {pid, host}: a local worker exited, requeue its jobs at once
    WORKERS_DOWN supervisor -> broker {workers: [{id, state, ...}]}: its local workers that do not serve now
                (exited and restarting, or failed); the whole list each time, so that it can be re-sent

worker <-> broker (the broker's *worker* sockets)
    READY     worker -> broker {model, dim, device, capacity, ...}; broker answers WELCOME or REFUSED
    JOB       broker -> worker {job, attempt, n, normalize, [options]} + texts
    RESULT    worker -> broker {job, attempt, n, dim, [encoding, ...]} + vectors
    ERROR     worker -> broker {job, attempt, code, message, [indices, max_tokens]}
    HEARTBEAT both ways {}, worker's carries its stats {texts_done, texts_per_s, batch_sizes}
    DISCONNECT worker -> broker {}: leaving cleanly
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

import msgpack
import numpy as np
import orjson

from embed_common.errors import ErrorCode  # noqa: F401  (re-exported: the codes an ERROR header carries)

PROTOCOL = b"EC1"
MAX_HEADER_BYTES = 64 * 1024 * 1024

HEARTBEAT_INTERVAL = 1.0  # seconds between heartbeats, both ways
HEARTBEAT_LIVENESS = 3  # missed heartbeats before a peer is presumed dead


class Command(bytes, enum.Enum):
    READY = b"\x01"
    WELCOME = b"\x02"
    REFUSED = b"\x03"
    JOB = b"\x04"
    RESULT = b"\x05"
    ERROR = b"\x06"
    HEARTBEAT = b"\x07"
    DISCONNECT = b"\x08"
    SUBMIT = b"\x10"
    CANCEL = b"\x11"
    STATUS = b"\x12"
    WORKER_GONE = b"\x13"
    WORKERS_DOWN = b"\x14"


class Encoding(str, enum.Enum):
    """How a RESULT's vectors frame is written."""

    F32 = "f32"  # raw little-endian float32, row after row
    JSON = "json"  # a JSON array of rows, each number the shortest text that reads back to its float32


_COMMANDS = {command.value: command for command in Command}  # a dict lookup: Command(b) costs far more


class ProtocolError(ValueError):
    """A frame list that is not a valid message; the receiver logs and drops it."""


# Required header fields per command and their types; extra fields are allowed (forward compatible). A SUBMIT's
# or JOB's optional ``options`` map is checked by JobOptions.read (below), field by field.
FIELDS: dict[Command, dict[str, type | tuple[type, ...]]] = {
    Command.READY: {"model": str, "dim": int, "device": str, "capacity": int},
    Command.WELCOME: {"broker_id": str},
    Command.REFUSED: {"code": str, "message": str},
    Command.JOB: {"job": str, "attempt": int, "n": int, "normalize": bool},
    Command.RESULT: {"job": str, "n": int, "dim": int},
    Command.ERROR: {"job": str, "code": str, "message": str},
    Command.HEARTBEAT: {},
    Command.DISCONNECT: {},
    Command.SUBMIT: {"job": str, "n": int, "normalize": bool, "timeout_ms": int},
    Command.CANCEL: {"job": str},
    Command.STATUS: {"req": int},
    Command.WORKER_GONE: {"pid": int},
    Command.WORKERS_DOWN: {"workers": list},
}


# -- job options ------------------------------------------------------------------------------------------
# A SUBMIT (and the JOB the broker makes of it) may carry an ``options`` map: the job's options that are not at
# their default. :class:`JobOptions` is their one typed form; :meth:`JobOptions.read` is the one place the map is
# checked (the broker checks a SUBMIT's, answering BAD_REQUEST; the worker reads a JOB's).
#
# To add an option: one row (a field) in JobOptions below: its name, type and default, and its ``row(how it is
# read from the wire, what it means, an example other than the default)``, with a ``write`` when its wire form
# is not the value itself. Reading, writing, refusing unknown options and the table's test
# (tests/unit/test_protocol.py, which round-trips every example) follow from the row.


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # bool is an int subclass


@dataclass(frozen=True)
class ChunkOption:
    """The ``chunk`` option: embed each text's chunks of at most ``tokens`` tokens, ``overlap`` of them shared
    with the chunk before (None: the worker's defaults within its model's limit, worker/chunking.py)."""

    tokens: int | None = None
    overlap: int | None = None

    def __post_init__(self) -> None:
        for name, value in (("tokens", self.tokens), ("overlap", self.overlap)):
            if value is not None and not _is_int(value):
                raise ProtocolError(f"chunk {name} must be an integer")
        if self.tokens is not None and self.tokens < 1:
            raise ProtocolError("chunk tokens must be at least 1")
        if self.overlap is not None and self.overlap < 0:
            raise ProtocolError("chunk overlap must be at least 0")

    @classmethod
    def read(cls, raw: Any) -> ChunkOption:
        if not isinstance(raw, dict):
            raise ProtocolError("'chunk' must be an object")
        unknown = sorted(str(name) for name in raw if name not in ("tokens", "overlap"))
        if unknown:
            raise ProtocolError(f"unknown chunk field(s) {', '.join(unknown)[:80]}")
        return cls(**raw)

    def wire(self) -> dict[str, int]:
        return {name: value for name, value in (("tokens", self.tokens), ("overlap", self.overlap))
                if value is not None}


def _read_bool(raw: Any) -> bool:
    if not isinstance(raw, bool):
        raise ProtocolError("must be true or false")
    return raw


def _read_text(raw: Any) -> str:
    if not isinstance(raw, str):
        raise ProtocolError("must be a string")
    return raw


_ENCODINGS = {encoding.value: encoding for encoding in Encoding}  # a dict lookup: Encoding(s) costs far more


def _read_encoding(raw: Any) -> Encoding:
    encoding = _ENCODINGS.get(raw) if isinstance(raw, str) else None
    if encoding is None:
        raise ProtocolError(f"must be one of {', '.join(_ENCODINGS)}")
    return encoding


def row(read: Callable[[Any], Any], meaning: str, example: Any,
        write: Callable[[Any], Any] = lambda value: value) -> dict[str, Any]:
    """A row of :class:`JobOptions` (its field's metadata): how the option is read from the wire, what it means,
    a value other than its default (the table's test sends each), and how it is written when not as it is."""
    return {"read": read, "meaning": meaning, "example": example, "write": write}


@dataclass(frozen=True)
class JobOptions:
    """The typed options of a job; one field a row (see "To add an option" above)."""

    truncate: bool = field(default=True, metadata=row(
        _read_bool, "false: an input longer than the model's token limit fails the job as INPUT_TOO_LONG (with "
        "its indices) instead of being cut", example=False))
    chunk: ChunkOption | None = field(default=None, metadata=row(
        ChunkOption.read, "embed each text's chunks instead of the text; the RESULT's chunks hold [text index, "
        "start, end] per vector", example=ChunkOption(tokens=40, overlap=4), write=ChunkOption.wire))
    encoding: Encoding = field(default=Encoding.F32, metadata=row(
        _read_encoding, "how the RESULT's vectors frame is written", example=Encoding.JSON,
        write=lambda encoding: encoding.value))
    query: str | None = field(default=None, metadata=row(
        _read_text, "a rerank job (a reranker's worker only): score each text as a document against this query; "
        "the RESULT holds one number a text (dim 1)", example="what is a cross-encoder?"))
    raw_scores: bool = field(default=False, metadata=row(
        _read_bool, "a rerank job's scores as the model's raw logits, without its activation (CrossEncoder."
        "predict applies it)", example=True))
    tokenize: bool = field(default=False, metadata=row(
        _read_bool, "count tokens instead of encoding: the RESULT holds no vectors (dim 0) but counts, each text's "
        "tokens (the prompt's and the special tokens included, none cut), and the ids the model would be fed",
        example=True))
    prompt: str | None = field(default=None, metadata=row(
        _read_text, "put before each text (and counted in its tokens), as sentence-transformers' encode(prompt=...) "
        "does", example="query: "))

    @classmethod
    def read(cls, raw: Any) -> JobOptions:
        """The options of a header's ``options`` map (None or absent: the defaults); ProtocolError, with a
        message fit for the client, when the map is not one or holds an unknown option or a bad value."""
        if raw is None:
            return DEFAULT_OPTIONS
        if not isinstance(raw, dict):
            raise ProtocolError("'options' must be a map")
        if not raw.keys() <= OPTION_ROWS.keys():
            unknown = sorted(str(name) for name in raw if name not in OPTION_ROWS)
            raise ProtocolError(f"unknown job option(s) {', '.join(unknown)[:80]}")
        values = {}
        for name, value in raw.items():
            try:
                values[name] = _READERS[name](value)
            except ProtocolError as exc:
                raise ProtocolError(f"job option {name!r}: {exc}") from None
        return cls(**values)

    @functools.cached_property
    def _wire(self) -> dict[str, Any]:
        return {name: option.metadata["write"](getattr(self, name)) for name, option in OPTION_ROWS.items()
                if getattr(self, name) != option.default}

    def wire(self) -> dict[str, Any]:
        """The ``options`` map of a header: the options not at their default (empty: send none). Made once."""
        return self._wire


OPTION_ROWS = {row.name: row for row in fields(JobOptions)}
_READERS = {name: row.metadata["read"] for name, row in OPTION_ROWS.items()}
DEFAULT_OPTIONS = JobOptions()

# Commands that carry a vectors payload frame.
WITH_VECTORS = {Command.RESULT}
# Commands that carry texts: a frame of them, and their count ``n`` in the header.
WITH_TEXTS = {Command.SUBMIT, Command.JOB}


@dataclass
class Message:
    command: Command
    header: dict[str, Any]
    payload: list[bytes] = field(default_factory=list)

    def vectors(self) -> np.ndarray:
        """The (n, dim) float32 matrix carried by a RESULT, whatever its encoding."""
        return decode_vectors(self.payload[0] if self.payload else b"", self.header["n"], self.header["dim"],
                              Encoding(self.header.get("encoding", Encoding.F32.value)))

    def options(self) -> JobOptions:
        """The options a SUBMIT or JOB carries (JobOptions.read: ProtocolError when they are not valid)."""
        return JobOptions.read(self.header.get("options"))

    def text_count(self) -> int:
        """How many texts a SUBMIT or JOB carries, without reading them."""
        return int(self.header["n"])

    def texts(self) -> list[str]:
        """The texts a SUBMIT or JOB carries (read from its frame: only the worker needs them); ProtocolError
        when they are not ``n`` strings."""
        try:
            texts = msgpack.unpackb(self.payload[0], raw=False)
        except Exception as exc:  # msgpack raises several types for garbage
            raise ProtocolError(f"texts frame is not msgpack: {type(exc).__name__}") from None
        if not isinstance(texts, list) or len(texts) != self.header["n"]:
            raise ProtocolError(f"texts frame does not hold {self.header['n']} texts")
        if not all(isinstance(t, str) for t in texts):
            raise ProtocolError("texts must be strings")
        return texts


def encode(command: Command, header: dict[str, Any] | None = None, *payload: bytes) -> list[bytes]:
    return [PROTOCOL, command.value, msgpack.packb(header or {}, use_bin_type=True), *payload]


def decode(frames: list[bytes]) -> Message:
    """Parse and check a message (without any routing identity); raise ProtocolError when it is not one."""
    if len(frames) < 3:
        raise ProtocolError(f"expected at least 3 frames, got {len(frames)}")
    if frames[0] != PROTOCOL:
        raise ProtocolError(f"unknown protocol tag {frames[0][:16]!r}")
    command = _COMMANDS.get(frames[1])
    if command is None:
        raise ProtocolError(f"unknown command {frames[1][:8]!r}")
    if len(frames[2]) > MAX_HEADER_BYTES:
        raise ProtocolError("header too large")
    try:
        header = msgpack.unpackb(frames[2], raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several types for garbage
        raise ProtocolError(f"header is not msgpack: {type(exc).__name__}") from None
    if not isinstance(header, dict):
        raise ProtocolError("header is not a map")
    for name, kind in FIELDS[command].items():
        value = header.get(name)
        # bool is an int subclass: an int field must not accept True/False and vice versa
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ProtocolError(f"{command.name}: field {name!r} missing or not {kind}")
    message = Message(command, header, list(frames[3:]))
    if command in WITH_TEXTS and (header["n"] < 0 or len(message.payload) != 1):
        raise ProtocolError(f"{command.name}: needs n >= 0 and one texts frame")
    if command in WITH_VECTORS:
        _check_vectors(command, header, message.payload)
    return message


def _check_vectors(command: Command, header: dict[str, Any], payload: list[bytes]) -> None:
    n, dim, encoding = header["n"], header["dim"], header.get("encoding", Encoding.F32.value)
    if n < 0 or dim < 0 or len(payload) != 1:
        raise ProtocolError(f"{command.name}: needs n, dim >= 0 and one vectors frame")
    if encoding == Encoding.F32.value:
        if len(payload[0]) != n * dim * 4:
            raise ProtocolError(f"{command.name}: vectors frame does not hold {n}x{dim} float32")
    elif encoding == Encoding.JSON.value:  # its outline only: the head reads no number of it
        rows = memoryview(payload[0])  # bytes, or the broker's zmq.Frame
        if (rows[:2], rows[-2:]) != ((b"[[", b"]]") if n else (b"[]", b"[]")):
            raise ProtocolError(f"{command.name}: JSON vectors frame is not an array of {n} rows")
    else:
        raise ProtocolError(f"{command.name}: unknown vectors encoding {str(encoding)[:16]!r}")


def encode_texts(texts: list[str]) -> bytes:
    """The texts frame of a SUBMIT (the broker forwards it to the worker as it is)."""
    return msgpack.packb(texts, use_bin_type=True)


def encode_vectors(vectors: np.ndarray, encoding: Encoding = Encoding.F32) -> bytes:
    rows = np.ascontiguousarray(vectors, dtype="<f4")
    if encoding is Encoding.JSON:  # orjson writes a float32 array from its buffer, each number as float32's
        return orjson.dumps(rows, option=orjson.OPT_SERIALIZE_NUMPY)  # shortest text: it reads back the same
    return rows.tobytes()


def decode_vectors(data: bytes, n: int, dim: int, encoding: Encoding = Encoding.F32) -> np.ndarray:
    if encoding is Encoding.JSON:
        return np.asarray(orjson.loads(data), dtype=np.float32).reshape(n, dim)
    return np.frombuffer(data, dtype="<f4").reshape(n, dim)
