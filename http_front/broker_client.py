"""The front's link to the broker: one I/O thread owns the DEALER socket; request threads wait on futures.

Request threads call :meth:`BrokerClient.embed`; it splits the texts into jobs, queues them for the I/O
thread and waits for every job's future until the request's deadline. The I/O thread also asks the broker
for its status every ``status_interval``; that doubles as a heartbeat: when the broker answers with a new
``broker_id`` (it restarted) every job still in flight is sent again with the same id, so that nothing is
lost, and the broker's job table keeps it from being done twice.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, Future, InvalidStateError, wait
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zmq

from embed_common import protocol, sockets
from embed_common.errors import ErrorCode
from embed_common.jobs import JOB_TEXTS, estimated_tokens, job_starts, spread_bounds
from embed_common.protocol import Command, ProtocolError
from embed_common.status import BrokerStatus
from http_front.errors import ApiError

log = logging.getLogger(__name__)

START_INTERVAL = 0.05  # seconds between status requests until the first worker shows (start-up is not delayed)
GONE_CHECK = 0.25  # seconds between checks that a waiting request's client is still there


@dataclass
class EmbedResult:
    vectors: np.ndarray
    truncated: list[int] = field(default_factory=list)
    tokens: int = 0
    chunks: list[Any] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class _Pending:
    frames: list[bytes]  # the SUBMIT, kept to send again if the broker restarts
    future: Future


class BrokerClient:
    def __init__(self, address: str, context: zmq.Context | None = None, job_texts: int = JOB_TEXTS,
                 status_interval: float = 0.5, on_first_worker: Callable[[], None] | None = None) -> None:
        self.address = address
        self.on_first_worker = on_first_worker  # called once, on the I/O thread, after the status is stored
        self.context = context or zmq.Context.instance()
        self.job_texts = job_texts
        self.status_interval = status_interval
        self._outbox: deque[list[bytes]] = deque()
        self._pending: dict[str, _Pending] = {}
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="broker-io", daemon=True)
        self._req = itertools.count(1)
        self.status: dict[str, Any] | None = None  # the broker's latest STATUS header, as it came
        self._typed_status = BrokerStatus()  # the same, parsed once (embed_common/status.py)
        self.status_at = 0.0  # monotonic time it arrived
        self.broker_id: str | None = None
        self.worker_seen = False  # until a status lists a worker, the status is asked for often (START_INTERVAL)
        self._job_prefix = uuid.uuid4().hex[:16]  # job ids: unique across fronts, cheap within one
        self._job_numbers = itertools.count()

    # -- request threads ----------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._wake()
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self._wake_r.close()
            self._wake_w.close()

    def latest_status(self, max_age: float = 3.0) -> dict[str, Any] | None:
        """The raw STATUS header, or None when there is none younger than ``max_age`` seconds."""
        if self.status is None or time.monotonic() - self.status_at > max_age:
            return None
        return self.status

    def broker_status(self, max_age: float = 3.0) -> BrokerStatus | None:
        """The broker's latest status, typed; None when there is none younger than ``max_age`` seconds."""
        if self.status is None or time.monotonic() - self.status_at > max_age:
            return None
        return self._typed_status

    def embed(self, texts: list[str], normalize: bool, timeout: float,
              options: dict[str, Any] | None = None, job_chars: int | None = None,
              gone: Callable[[], bool] | None = None) -> EmbedResult:
        """Embed ``texts`` in jobs of ``job_texts`` texts, or fewer that hold about ``job_chars`` characters (a
        chunked job's work grows with its text, not with its count), and in at least one job per worker (runs
        of about equal estimated work: :func:`spread_bounds`) when there are several. With a ``chunk`` option
        each job's rows are its texts' chunks, and ``chunks`` holds ``[text index, start, end]`` for every row.
        ``gone`` says whether the client has gone away: then the jobs still queued are cancelled (CLIENT_GONE)."""
        deadline = time.monotonic() + timeout
        chunked = bool(options and "chunk" in options)  # every chunk is encoded: work grows with the characters
        max_tokens = self._max_tokens()
        work = [len(t) if chunked else estimated_tokens(t, max_tokens) for t in texts]
        bounds = spread_bounds(work, self._workers())
        starts = [a + s for a, b in itertools.pairwise(bounds) for s in self._job_starts(texts[a:b], job_chars)]
        parts = [texts[a:b] for a, b in itertools.pairwise([*starts, len(texts)])]
        futures = [self._submit(part, normalize, timeout, options) for part in parts]
        replies = []
        too_long: list[int] = []  # request-level indices of inputs over the token limit (with truncate: false)
        max_tokens = None
        try:
            if len(futures) > 1 or gone is not None:  # one job, unwatched: waiting for it is waiting for its error
                self._raise_first_error([future for _, future in futures], deadline, gone)
            for start, (job_id, future) in zip(starts, futures, strict=True):
                try:
                    replies.append(self._wait(job_id, future, deadline))
                except ApiError as exc:  # INPUT_TOO_LONG: wait for every job, to name every such input
                    if exc.code != ErrorCode.INPUT_TOO_LONG:
                        raise
                    too_long.extend(start + int(i) for i in exc.details.get("indices", []))
                    max_tokens = exc.details.get("max_tokens", max_tokens)
        except ApiError:
            self._cancel([job_id for job_id, future in futures if not future.done()])
            with self._lock:  # and forget the answered ones
                for job_id, _ in futures:
                    self._pending.pop(job_id, None)
            raise
        if too_long:
            raise ApiError(ErrorCode.INPUT_TOO_LONG, f"{len(too_long)} input(s) longer than the model's limit of "
                           f"{max_tokens} tokens, at indices {too_long}; shorten them or allow truncation",
                           indices=too_long, max_tokens=max_tokens)
        vectors = np.concatenate([v for v, _ in replies]) if replies else np.zeros((0, 0), np.float32)
        result = EmbedResult(vectors)
        offset = rows = 0  # texts and vector rows of the jobs before this one (rows are chunks, when chunked)
        for (part_vectors, header), part in zip(replies, parts, strict=True):
            result.truncated.extend(rows + i for i in header.get("truncated", []))
            result.tokens += int(header.get("tokens", 0))
            for name in ("queue_ms", "worker_ms", "encode_ms"):
                result.timings[name] = max(result.timings.get(name, 0.0), float(header.get(name, 0.0)))
            result.chunks.extend([offset + index, start, end] for index, start, end in header.get("chunks", []))
            offset += len(part)
            rows += len(part_vectors)
        return result

    def abort(self, code: str, message: str) -> int:
        """Fail every job still waiting with ``code`` (at shutdown: a request is answered now rather than
        cut off later); returns how many were waiting."""
        with self._lock:
            waiting = [p.future for p in self._pending.values() if not p.future.done()]
        for future in waiting:
            with contextlib.suppress(InvalidStateError):  # its reply came in the meantime
                future.set_exception(ApiError(code, message))
        return len(waiting)

    def _max_tokens(self) -> int:
        status = self.broker_status()
        return (status.max_tokens if status else None) or 512

    def _workers(self) -> int:
        """Workers the broker last reported: a request is spread over them."""
        status = self.broker_status()
        return max(1, len(status.workers)) if status else 1

    def _job_starts(self, texts: list[str], job_chars: int | None) -> list[int]:
        return job_starts(texts, job_chars, self.job_texts)

    def _submit(self, texts: list[str], normalize: bool, timeout: float,
                options: dict[str, Any] | None) -> tuple[str, Future]:
        job_id = f"{self._job_prefix}{next(self._job_numbers):x}"
        header: dict[str, Any] = {"job": job_id, "n": len(texts), "normalize": normalize,
                                  "timeout_ms": int(timeout * 1000)}
        if options:
            header["options"] = options
        # first: what cannot be encoded is never pending
        frames = protocol.encode(Command.SUBMIT, header, protocol.encode_texts(texts))
        future: Future = Future()
        with self._lock:
            self._pending[job_id] = _Pending(frames, future)
        self._enqueue(frames)
        return job_id, future

    @staticmethod
    def _raise_first_error(futures: list[Future], deadline: float, gone: Callable[[], bool] | None = None) -> None:
        """Raise the first error of any job as soon as it comes (an OVERLOADED third job fails the request
        now, not after the first two are done), except INPUT_TOO_LONG, which the caller gathers from all; and
        CLIENT_GONE within GONE_CHECK seconds of ``gone()`` turning true."""
        waiting = set(futures)
        while waiting:
            left = max(0.0, deadline - time.monotonic())
            done, waiting = wait(waiting, min(left, GONE_CHECK) if gone else left, FIRST_EXCEPTION)
            if gone is not None and gone():
                raise ApiError("CLIENT_GONE", "the client closed its connection before the answer")
            if not done:
                if gone is not None and time.monotonic() < deadline:
                    continue
                return  # the deadline passed: the caller reports TIMEOUT
            for future in done:
                error = future.exception()
                if isinstance(error, ApiError) and error.code != ErrorCode.INPUT_TOO_LONG:
                    raise error

    def _wait(self, job_id: str, future: Future, deadline: float) -> tuple[np.ndarray, dict[str, Any]]:
        try:
            return future.result(timeout=max(0.0, deadline - time.monotonic()))
        except FutureTimeout:
            raise ApiError(ErrorCode.TIMEOUT, "the request did not finish before its deadline") from None
        finally:
            with self._lock:
                self._pending.pop(job_id, None)

    def _cancel(self, job_ids: list[str]) -> None:
        with self._lock:
            for job_id in job_ids:
                self._pending.pop(job_id, None)
        for job_id in job_ids:
            self._enqueue(protocol.encode(Command.CANCEL, {"job": job_id}))

    def _enqueue(self, frames: list[bytes]) -> None:
        self._outbox.append(frames)
        self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    # -- the I/O thread ----------------------------------------------------------------------------------
    def _run(self) -> None:
        sock = sockets.configure(self.context.socket(zmq.DEALER))
        sock.connect(self.address)
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        next_status = 0.0
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                if now >= next_status:
                    self._send(sock, protocol.encode(Command.STATUS, {"req": next(self._req)}), quiet=True)
                    next_status = now + (self.status_interval if self.worker_seen else START_INTERVAL)
                events = dict(poller.poll(max(1, int((next_status - now) * 1000))))
                if self._wake_r.fileno() in events:
                    try:
                        while self._wake_r.recv(4096):
                            pass
                    except (BlockingIOError, OSError):
                        pass
                while self._outbox:
                    self._send(sock, self._outbox.popleft())
                if sock in events:
                    for _ in range(10_000):
                        try:
                            frames = sock.recv_multipart(zmq.NOBLOCK, copy=True)
                        except zmq.Again:
                            break
                        self._handle(sock, frames)
        finally:
            sock.close(linger=0)

    def _send(self, sock: zmq.Socket, frames: list[bytes], quiet: bool = False) -> None:
        try:
            sock.send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:  # a status request is asked again soon: no warning for it
            (log.debug if quiet else log.warning)(
                "broker queue full: message dropped (the request will time out or be resent)")

    def _handle(self, sock: zmq.Socket, frames: list[bytes]) -> None:
        try:
            message = protocol.decode(frames)
        except ProtocolError as exc:
            log.warning("dropped a bad message from the broker: %s", exc)
            return
        header = message.header
        if message.command is Command.STATUS:
            self._on_status(sock, header)
            return
        job_id = header.get("job")
        with self._lock:
            pending = self._pending.get(job_id) if isinstance(job_id, str) else None
        if pending is None or pending.future.done():
            return  # answered already, cancelled or timed out: a reply is used at most once
        with contextlib.suppress(InvalidStateError):  # abort() may have failed it a moment ago
            if message.command is Command.RESULT:
                pending.future.set_result((message.vectors(), header))
            elif message.command is Command.ERROR:
                details = {k: header[k] for k in ("indices", "max_tokens") if k in header}
                pending.future.set_exception(ApiError.from_peer(header["code"], header["message"], **details))

    def _on_status(self, sock: zmq.Socket, header: dict[str, Any]) -> None:
        self._typed_status = BrokerStatus.parse(header)
        self.status = header
        self.status_at = time.monotonic()
        if not self.worker_seen and header.get("workers"):
            self.worker_seen = True
            if self.on_first_worker is not None:
                self.on_first_worker()  # after the status is stored: /health says ok from now on
        broker_id = header.get("broker_id")
        if broker_id == self.broker_id:
            return
        if self.broker_id is not None:
            with self._lock:
                pending = [p for p in self._pending.values() if not p.future.done()]
            log.warning("broker restarted (%s -> %s): re-sending %d jobs in flight",
                        self.broker_id[:8], str(broker_id)[:8], len(pending))
            for p in pending:
                self._send(sock, p.frames)
        self.broker_id = broker_id
