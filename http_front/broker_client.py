"""The front's link to the broker.

A request's thread talks to the broker itself, over a DEALER socket of its own for the time of the request
(a :class:`_Link`, taken from a pool and put back), so that nothing is handed between threads on the way:
:meth:`BrokerClient.embed` splits the texts into jobs, sends them, and polls that socket for their replies
until the request's deadline. One more thread, with a socket of its own, asks the broker for its status every
``status_interval``; that doubles as a heartbeat: when the broker answers with a new ``broker_id`` (it
restarted) every request still waiting sends its unanswered jobs again with the same ids, so that nothing is
lost, and the broker's job table keeps a job from being done twice.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import zmq

from embed_common import protocol, sockets
from embed_common.errors import ErrorCode
from embed_common.jobs import JOB_TEXTS, estimated_tokens, job_starts, spread_bounds, spread_parts
from embed_common.protocol import DEFAULT_OPTIONS, Command, Encoding, JobOptions, ProtocolError
from embed_common.status import BrokerStatus
from http_front.errors import ApiError

log = logging.getLogger(__name__)

START_INTERVAL = 0.05  # seconds between status requests until the first worker shows (start-up is not delayed)
GONE_CHECK = 0.25  # seconds between checks that a waiting request's client is still there
STATUS_MAX_AGE = 3.0  # seconds after which the broker's last status is stale: the broker is presumed unreachable


JsonRows = bytes | zmq.Frame  # a job's rows as a worker wrote them in JSON (protocol Encoding.JSON)


@dataclass
class EmbedResult:
    """A request's vectors as its jobs sent them, in input order: each a float32 matrix, or the rows already
    written as JSON (``[[...],...]``) when the request asked for JSON (``as_json``) and the worker could."""

    parts: list[np.ndarray | JsonRows] = field(default_factory=list)
    dims: list[int] = field(default_factory=list)
    truncated: list[int] = field(default_factory=list)
    tokens: int = 0
    chunks: list[Any] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    row_tokens: list[int] = field(default_factory=list)  # each row's tokens, where every worker said them
    counts: list[int] = field(default_factory=list)  # a tokenize request's: each text's tokens, none cut
    ids: list[list[int]] = field(default_factory=list)  # and the ids the model would be fed
    row_fingerprints: list[str | None] = field(default_factory=list)  # each row's model, as its worker said it

    @property
    def vectors(self) -> np.ndarray:
        """The (rows, dim) float32 matrix (JSON parts read back: each number is the shortest text of its float32,
        so it reads back to the same value)."""
        arrays = [p if isinstance(p, np.ndarray) else protocol.decode_vectors(memoryview(p), -1, dim, Encoding.JSON)
                  for p, dim in zip(self.parts, self.dims, strict=True)]
        return np.concatenate(arrays) if arrays else np.zeros((0, 0), np.float32)

    def vectors_json(self) -> list[memoryview | bytes]:
        """The rows as one JSON array of arrays, in pieces that are the workers' text itself, not copies of it
        (http_front/json_media.answer writes them as they are)."""
        rows = [memoryview(_json(p)) for p in self.parts]
        rows = [r for r in rows if len(r) > 2] or [memoryview(b"[]")]  # a job of no rows adds none
        if len(rows) == 1:  # the usual case: one job (or one of them had rows)
            return [rows[0]]
        pieces: list[memoryview | bytes] = [b"["]
        for i, r in enumerate(rows):
            pieces.extend([b"," if i else b"", r[1:-1]])
        return [*pieces, b"]"]

    def rows_json(self) -> list[orjson.Fragment]:
        """Each row as a JSON array of its own (the OpenAI answer's ``embedding``s)."""
        rows: list[orjson.Fragment] = []
        for part in self.parts:
            inner = bytes(memoryview(_json(part))[2:-2])  # the rows without the outer "[[" and "]]"
            if inner:
                rows.extend(orjson.Fragment(b"[" + row + b"]") for row in inner.split(b"],["))
        return rows


def too_long_error(indices: list[int], max_tokens: int | None) -> ApiError:
    """INPUT_TOO_LONG naming the request's ``indices`` of inputs over the model's limit."""
    return ApiError(ErrorCode.INPUT_TOO_LONG, f"{len(indices)} input(s) longer than the model's limit of "
                    f"{max_tokens} tokens, at indices {indices}; shorten them or allow truncation",
                    indices=indices, max_tokens=max_tokens)


def _json(part: np.ndarray | JsonRows) -> JsonRows:
    return protocol.encode_vectors(part, Encoding.JSON) if isinstance(part, np.ndarray) else part


@dataclass
class _Job:
    job_id: str
    start: int  # the index of its first text in the request
    frames: list[bytes]  # the SUBMIT, kept to send again if the broker restarts
    reply: tuple[np.ndarray | JsonRows, dict[str, Any]] | None = None
    error: ApiError | None = None

    @property
    def answered(self) -> bool:
        return self.reply is not None or self.error is not None


class _Link:
    """A DEALER socket to the broker and a wake-up socket pair, used by one request at a time."""

    def __init__(self, context: zmq.Context, address: str) -> None:
        self.sock = sockets.configure(context.socket(zmq.DEALER))
        self.sock.connect(address)
        self.wake_r, self.wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self.poller = zmq.Poller()
        self.poller.register(self.sock, zmq.POLLIN)
        self.poller.register(self.wake_r, zmq.POLLIN)
        self.jobs: dict[str, _Job] = {}  # the jobs of the request using it (none while it is in the pool)
        self.unanswered = 0  # of those jobs

    def send(self, frames: list[bytes]) -> None:
        try:
            self.sock.send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:
            log.warning("broker queue full: message dropped (the request will time out or be resent)")

    def wake(self) -> None:
        with contextlib.suppress(OSError):
            self.wake_w.send(b"\0")

    def drain_wakes(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            while self.wake_r.recv(4096):
                pass

    def close(self) -> None:
        self.sock.close(linger=0)
        self.wake_r.close()
        self.wake_w.close()


class BrokerClient:
    def __init__(self, address: str, context: zmq.Context | None = None, job_texts: int = JOB_TEXTS,
                 status_interval: float = 0.5, on_first_worker: Callable[[], None] | None = None,
                 start_interval: float = START_INTERVAL, gone_check: float = GONE_CHECK) -> None:
        self.address = address
        self.on_first_worker = on_first_worker  # called once, on the status thread, after the status is stored
        self.context = context or zmq.Context.instance()
        self.job_texts = job_texts
        self.status_interval = status_interval
        self.start_interval = start_interval  # between status requests until a worker shows
        self.gone_check = gone_check  # seconds between checks that a waiting request's client is still there
        self._lock = threading.Lock()
        self._free: list[_Link] = []  # links made and not in use
        self._busy: set[_Link] = set()  # links a request is using
        self._epoch = 0  # +1 each time the broker is seen to restart: waiting requests send their jobs again
        self._abort_epoch = 0  # +1 on each abort(): requests waiting since before it are answered its error
        self._abort_error: ApiError | None = None
        self._closed = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="broker-status", daemon=True)
        self._req = itertools.count(1)
        self._status = BrokerStatus()  # the broker's latest STATUS, parsed once (embed_common/status.py)
        self.status_at = 0.0  # monotonic time it arrived (0: none yet)
        self.broker_id: str | None = None
        self.worker_seen = False  # until a status lists a worker, the status is asked for often (start_interval)
        self._job_prefix = os.urandom(8).hex()  # job ids: unique across fronts, cheap within one
        self._job_numbers = itertools.count()

    # -- request threads ----------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread.ident is not None:  # started
            self._thread.join(timeout=5)
        with self._lock:  # a link still in use is closed by its request, when it gives it back
            self._closed = True
            free, self._free = self._free, []
        for link in free:
            link.close()

    @property
    def heard_from_broker(self) -> bool:
        """Whether any status has come, however long ago."""
        return self.status_at > 0

    def broker_status(self, max_age: float = STATUS_MAX_AGE) -> BrokerStatus | None:
        """The broker's latest status; None when there is none younger than ``max_age`` seconds."""
        if not self.heard_from_broker or time.monotonic() - self.status_at > max_age:
            return None
        return self._status

    def pending_jobs(self) -> int:
        """Jobs sent and not answered yet, over every request waiting now."""
        with self._lock:
            busy = list(self._busy)
        return sum(link.unanswered for link in busy)

    def embed(self, texts: list[str], normalize: bool, timeout: float,
              options: JobOptions = DEFAULT_OPTIONS, job_chars: int | None = None,
              gone: Callable[[], bool] | None = None, as_json: bool = False,
              model: str | None = None) -> EmbedResult:
        """Embed ``texts`` in jobs of ``job_texts`` texts, or fewer that hold about ``job_chars`` characters (a
        chunked job's work grows with its text, not with its count), spread over the workers this front does not
        keep busy already (runs of about equal estimated work: embed_common/jobs.py). With a ``chunk`` option
        each job's rows are its texts' chunks, and ``chunks`` holds ``[text index, start, end]`` for every row.
        ``gone`` says whether the client has gone away: then the jobs still queued are cancelled (CLIENT_GONE).
        ``as_json``: the workers write the rows as JSON, which the answer then carries as it is (the head does
        no work per number). ``model``: the alias of the model's pool (None: the broker's default model); the
        request is spread over that model's workers only."""
        deadline = time.monotonic() + timeout
        if as_json:
            options = dataclasses.replace(options, encoding=Encoding.JSON)
        parts = spread_parts(self._workers(model), self.pending_jobs())
        if parts > 1:
            chunked = options.chunk is not None  # every chunk is encoded: work grows with characters
            max_tokens = self._max_tokens(model)
            work = [len(t) if chunked else estimated_tokens(t, max_tokens) for t in texts]
            bounds = spread_bounds(work, parts)
        else:  # one run: no need to weigh the texts
            bounds = [0, len(texts)]
        starts = [a + s for a, b in itertools.pairwise(bounds)
                  for s in job_starts(texts[a:b], job_chars, self.job_texts)]
        epochs = self._epoch, self._abort_epoch  # before the jobs are sent: a restart or abort from now on counts
        link = self._take_link()
        try:
            jobs = [self._submit(texts[a:b], normalize, timeout, options, link, a, model)
                    for a, b in itertools.pairwise([*starts, len(texts)])]
            self._collect(link, jobs, deadline, gone, epochs)
        finally:
            self._give_back(link)
        return self._result(jobs)

    def abort(self, code: str, message: str) -> int:
        """Fail every job still waiting with ``code`` (at shutdown: a request is answered now rather than
        cut off later); returns how many were waiting."""
        with self._lock:
            self._abort_error = ApiError(code, message)
            self._abort_epoch += 1
            busy = list(self._busy)
            waiting = sum(link.unanswered for link in busy)  # before they wake and give their links back
        for link in busy:
            link.wake()
        return waiting

    def _max_tokens(self, model: str | None) -> int:
        status = self.broker_status()
        if status is None:
            return 512
        pool = next((m for m in status.models if m.get("alias") == model), None) if model else None
        found = pool.get("max_tokens") if pool else status.max_tokens
        return found if isinstance(found, int) and found > 0 else 512

    def _workers(self, model: str | None) -> int:
        """Workers of ``model`` the broker last reported (None: the default model's): a request is spread over
        them."""
        status = self.broker_status()
        if status is None:
            return 1
        if model is None:
            model = status.models[0].get("alias") if status.models else None
        return max(1, len(status.workers_of(model)))

    def _take_link(self) -> _Link:
        with self._lock:
            link = self._free.pop() if self._free else None
            if link is None:
                link = _Link(self.context, self.address)
            self._busy.add(link)
        return link

    def _give_back(self, link: _Link) -> None:
        """Cancel what the request leaves unanswered (its client timed out or went away, or a job failed) and
        put the link back; a late reply it gets later is dropped by its job id."""
        for job in link.jobs.values():
            if not job.answered:
                link.send(protocol.encode(Command.CANCEL, {"job": job.job_id}))
        with self._lock:
            link.jobs = {}
            link.unanswered = 0
            self._busy.discard(link)
            closed = self._closed
            if not closed:
                self._free.append(link)
        if closed:
            link.close()

    def _submit(self, texts: list[str], normalize: bool, timeout: float, options: JobOptions,
                link: _Link, start: int = 0, model: str | None = None) -> _Job:
        job_id = f"{self._job_prefix}{next(self._job_numbers):x}"
        header: dict[str, Any] = {"job": job_id, "n": len(texts), "normalize": normalize,
                                  "timeout_ms": int(timeout * 1000)}
        if model is not None:
            header["model"] = model
        if options.wire():  # made once per request's options
            header["options"] = options.wire()
        # first: what cannot be encoded is never pending
        job = _Job(job_id, start, protocol.encode(Command.SUBMIT, header, protocol.encode_texts(texts)))
        link.jobs[job_id] = job
        link.unanswered += 1
        link.send(job.frames)
        return job

    def _collect(self, link: _Link, jobs: list[_Job], deadline: float, gone: Callable[[], bool] | None,
                 epochs: tuple[int, int]) -> None:
        """Wait for every job's reply. Raise the first error of any job as soon as it comes (an OVERLOADED third
        job fails the request now, not after the first two are done), except INPUT_TOO_LONG, gathered from all
        by :meth:`_result`; CLIENT_GONE within ``gone_check`` seconds of ``gone()`` turning true; TIMEOUT at the
        deadline; the abort's error when :meth:`abort` is called."""
        epoch, abort_epoch = epochs  # as they were when the request began
        left = len(jobs)
        while left:
            for frames in self._received(link):
                job = self._answer(link, frames)
                if job is not None:
                    left -= 1
                    if job.error is not None and job.error.code != ErrorCode.INPUT_TOO_LONG:
                        raise job.error
            if not left:
                return
            if self._abort_epoch != abort_epoch and self._abort_error is not None:
                raise self._abort_error
            if gone is not None and gone():
                raise ApiError("CLIENT_GONE", "the client closed its connection before the answer")
            if self._epoch != epoch:  # the broker restarted: it may have lost what it held
                epoch = self._epoch
                for job in jobs:
                    if not job.answered:
                        link.send(job.frames)
            wait = deadline - time.monotonic()
            if wait <= 0:
                raise ApiError(ErrorCode.TIMEOUT, "the request did not finish before its deadline")
            link.poller.poll(max(1, int(min(wait, self.gone_check) * 1000)) if gone else max(1, int(wait * 1000)))
            link.drain_wakes()

    @staticmethod
    def _received(link: _Link) -> list[list[bytes]]:
        received = []
        for _ in range(10_000):
            try:
                received.append(sockets.received(link.sock.recv_multipart(zmq.NOBLOCK, copy=False), 3))
            except zmq.Again:
                break
        return received

    @staticmethod
    def _answer(link: _Link, frames: list[bytes]) -> _Job | None:
        """Store a reply in its job; the job, or None when it is not one of this request's (a late reply to
        an earlier request on this link, or a second reply: a reply is used at most once)."""
        try:
            message = protocol.decode(frames)
        except ProtocolError as exc:
            log.warning("dropped a bad message from the broker: %s", exc)
            return None
        header = message.header
        job = link.jobs.get(header.get("job"))  # type: ignore[arg-type]
        if job is None or job.answered:
            return None
        if message.command is Command.RESULT:
            json_rows = header.get("encoding") == Encoding.JSON.value  # kept as the frame it came in
            job.reply = (message.payload[0] if json_rows else message.vectors(), header)
        elif message.command is Command.ERROR:
            details = {k: header[k] for k in ("indices", "max_tokens") if k in header}
            job.error = ApiError.from_peer(header["code"], header["message"], **details)
        else:
            return None
        link.unanswered -= 1
        return job

    @staticmethod
    def _result(jobs: list[_Job]) -> EmbedResult:
        too_long: list[int] = []  # request-level indices of inputs over the token limit (with truncate: false)
        max_tokens = None
        for job in jobs:
            if job.error is not None:  # only INPUT_TOO_LONG gets here: name every such input of every job
                too_long.extend(job.start + int(i) for i in job.error.details.get("indices", []))
                max_tokens = job.error.details.get("max_tokens", max_tokens)
        if too_long:
            raise too_long_error(too_long, max_tokens)
        result = EmbedResult()
        row_tokens: list[int] | None = []
        rows = 0  # vector rows of the jobs before this one (rows are chunks, when chunked)
        for job in jobs:
            assert job.reply is not None
            vectors, header = job.reply
            result.parts.append(vectors)
            result.dims.append(int(header["dim"]))
            result.truncated.extend(rows + i for i in header.get("truncated", []))
            result.tokens += int(header.get("tokens", 0))
            for name in ("queue_ms", "worker_ms", "encode_ms"):
                result.timings[name] = max(result.timings.get(name, 0.0), float(header.get(name, 0.0)))
            result.chunks.extend([job.start + index, start, end] for index, start, end in header.get("chunks", []))
            rows += int(header["n"])
            counts, ids = header.get("counts"), header.get("ids")
            if isinstance(counts, list) and isinstance(ids, list):  # a tokenize job's
                result.counts.extend(int(c) for c in counts)
                result.ids.extend(ids)
            tokens = header.get("row_tokens")
            if row_tokens is not None and isinstance(tokens, list) and len(tokens) == int(header["n"]):
                row_tokens.extend(tokens)
            else:
                row_tokens = None
            fingerprint = header.get("fingerprint")
            result.row_fingerprints.extend([fingerprint if isinstance(fingerprint, str) else None] * int(header["n"]))
        result.row_tokens = row_tokens or []
        return result

    # -- the status thread -------------------------------------------------------------------------------
    def _run(self) -> None:
        sock = sockets.configure(self.context.socket(zmq.DEALER))
        sock.connect(self.address)
        next_status = 0.0
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                if now >= next_status:
                    with contextlib.suppress(zmq.Again):  # asked again soon
                        sock.send_multipart(protocol.encode(Command.STATUS, {"req": next(self._req)}), zmq.NOBLOCK)
                    next_status = now + (self.status_interval if self.worker_seen else self.start_interval)
                if not sock.poll(max(1, int(min(next_status - now, 0.25) * 1000))):
                    continue
                for _ in range(10_000):
                    try:
                        frames = sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    try:
                        message = protocol.decode(frames)
                    except ProtocolError as exc:
                        log.warning("dropped a bad message from the broker: %s", exc)
                        continue
                    if message.command is Command.STATUS:
                        self._on_status(message.header)
        finally:
            sock.close(linger=0)

    @staticmethod
    def _every_model_served(header: dict[str, Any]) -> bool:
        """Whether a status lists a worker of every model (one model: any worker)."""
        models = header.get("models")
        if isinstance(models, list) and models:
            return all(isinstance(m, dict) and m.get("workers") for m in models)
        return bool(header.get("workers"))

    def _on_status(self, header: dict[str, Any]) -> None:
        self._status = BrokerStatus.parse(header)
        self.status_at = time.monotonic()
        if not self.worker_seen and self._every_model_served(header):
            self.worker_seen = True
            if self.on_first_worker is not None:
                self.on_first_worker()  # after the status is stored: /health says ok from now on
        broker_id = header.get("broker_id")
        if broker_id == self.broker_id:
            return
        if self.broker_id is not None:
            with self._lock:
                self._epoch += 1
                busy = list(self._busy)
            log.warning("broker restarted (%s -> %s): re-sending the jobs of %d requests in flight",
                        self.broker_id[:8], str(broker_id)[:8], len(busy))
            for link in busy:
                link.wake()
        self.broker_id = broker_id
