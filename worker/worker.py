"""A worker: registers with the broker, takes jobs, encodes them in batches, heartbeats throughout.

The I/O thread (``WorkerLoop.run``) owns the ZeroMQ socket: it registers, answers heartbeats, hands jobs to
the compute threads and sends back what they finish, so the broker keeps hearing from us while a long batch
runs; it also tokenizes each job as it arrives. The compute threads (``--compute-threads``: one per physical
core on CPU, one on a GPU) share the model and one planner (worker/batching.py) over every job the worker
holds; each encodes the next planned batch, so one worker computes on every core.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any

import zmq

from embed_common import VERSION, protocol, sockets
from embed_common.exits import ExitCode
from embed_common.protocol import ChunkOption, Command, Encoding, ErrorCode, JobOptions, ProtocolError
from embed_common.settings import default
from embed_common.vectors import normalize_rows
from worker import heap
from worker.batch_stats import BatchSizes
from worker.batching import CostModel, PendingJob, Pool, default_cost_model
from worker.chunking import ChunkPlan, chunk_texts
from worker.cross_encoder import PairScorer
from worker.embedder import PROBE_TEXTS, Embedder

log = logging.getLogger(__name__)

HEAP_TRIM_INTERVAL = 1.0  # seconds: under load the compute thread returns freed heap memory this often
# Once idle this long, a compute thread tidies up (:meth:`ComputeThreads.tidy`): off the path of a lone text,
# which would otherwise wait for the trim of its own batch before its answer is sent.
IDLE_TIDY = 0.5  # seconds
# After this many padded tokens since it last gave them back, the engine's buffers are worth giving back once
# idle: OpenVINO keeps buffers for the shapes it has run, and a batch mix grows a worker by hundreds of MB
# (`python bench/engines.py` prints each engine's memory after one). A lone query is tens of tokens, so a
# desktop's searches seldom pay the next pass's allocation; a bulk load always gives its memory back.
RELEASE_TOKENS = 8192


@dataclass(frozen=True)
class WorkerSettings:
    broker: str
    model: str = default("model", "worker")
    device: str = default("device", "worker")
    precision: str = default("precision", "worker")
    threads: int = default("threads", "worker")  # intra-op threads per compute thread (torch or ORT); 0: 1 on CPU
    compute_threads: int = default("compute-threads", "worker")  # passes at once over the one model; 0: cores on CPU
    backend: str = default("backend", "worker")  # auto (measured: worker/engine_select.py) or an engine's name
    min_cosine: float = default("min-cosine", "worker")  # the fidelity check's bar for auto
    capacity: int = default("capacity", "worker")  # texts in flight the broker may give us; 0: by the device
    token_budget: int = default("token-budget", "worker")  # padded tokens per batch; 0: by the device
    max_batch: int = 256
    worker_id: str = ""
    broker_key: str | None = None  # broker's public key file (CurveZMQ, for --lan brokers)
    key: str | None = None  # this worker's secret key file
    reconnect_max: float = 30.0
    parent_pid: int = 0


class ComputeThreads:
    """Encodes the jobs it holds in cross-request batches on ``threads`` compute threads over one model;
    reports each finished job through ``done``.

    :meth:`submit` runs on the I/O thread: it tokenizes (and chunks) the job there, off the compute threads,
    and queues it. Each compute thread, in turn under one lock, moves queued jobs into the shared
    :class:`Pool` and takes the batch the pool hands out; it encodes that batch outside the lock (ONNX
    Runtime's ``run`` and torch's kernels release the GIL, so the threads compute on several cores at once),
    then finishes the jobs the batch completes. A job that arrives while batches run is in the next plan.
    While other compute threads are idle a thread takes only its share of the planned work
    (:meth:`Pool.next_batch`'s ``parts``), so a lone multi-text request keeps every core busy.
    """

    def __init__(self, embedder: Embedder, token_budget: int, max_batch: int, wake: socket.socket,
                 cost: CostModel | None = None, threads: int = 1) -> None:
        self.embedder = embedder
        self.pool = Pool(token_budget, max_batch,
                         cost or default_cost_model(embedder.device, embedder.precision, embedder.backend))
        self.threads = max(1, threads)
        self._lock = threading.Condition()
        self._queued: list[PendingJob] = []
        self._stopped = False
        self._idle = 0  # compute threads waiting for work
        self._workers: list[threading.Thread] = []
        self.done: deque[tuple[PendingJob | None, dict[str, Any] | None]] = deque()
        self.generation = 0  # bumped when the broker forgets us: older jobs are dropped
        self._wake = wake
        self.texts_done = 0
        self.busy_seconds = 0.0  # summed over the compute threads
        self.batches_by_thread = [0] * self.threads  # batches each compute thread encoded (for /health, tests)
        self.batch_sizes = BatchSizes()
        self._trim_heap = heap.trimmer()
        self._trimmed_at = 0.0
        self._encoding = 0  # batches taken and not yet finished
        self._untidy = False  # a batch ran since the last tidy
        self._tokens_since_release = 0  # padded tokens encoded since the engine last gave its buffers back
        self.idle_tidy = IDLE_TIDY
        self.releases = 0  # times the engine gave its buffers back (for /health's stats and the tests)

    def submit(self, header: dict[str, Any]) -> None:
        generation = self.generation
        try:
            job = self.prepare(header)
        except InputError as exc:
            self.reject(header, exc.code, str(exc), **exc.details)
            return
        if job.remaining == 0 or job.counts is not None:  # no tokens to encode, or a tokenize job: answered now
            self._finish(job, None)
            return
        job.generation = generation
        with self._lock:
            self._queued.append(job)
            self._lock.notify()

    def reject(self, header: dict[str, Any], code: str, message: str, **details: Any) -> None:
        """Answer a job with an error without encoding it."""
        self._finish(None, {"job": header["job"], "attempt": header["attempt"], "code": code, "message": message,
                            **details})

    def reset(self) -> None:
        self.generation += 1

    def start(self) -> None:
        for index in range(self.threads):
            thread = threading.Thread(target=self.run, args=(index,), name=f"compute-{index}", daemon=True)
            self._workers.append(thread)
            thread.start()

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            self._lock.notify_all()

    def join(self, timeout: float | None = None) -> None:
        """Wait for every compute thread, ``timeout`` seconds in all (None: without bound)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._workers:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))

    def alive(self) -> bool:
        return any(thread.is_alive() for thread in self._workers)

    def run(self, index: int = 0) -> None:
        while True:
            taken = self._next(index)
            if taken is None:
                return
            self.encode(*taken, index=index)

    def _next(self, index: int) -> tuple[list[tuple[PendingJob, int]], bool] | None:
        """The next batch for compute thread ``index`` and whether it runs alone (no other batch encoding, none
        left to plan), waiting for one; None once stopped."""
        with self._lock:
            while not self._stopped:
                for job in self._queued:
                    self.pool.add(job)
                self._queued.clear()
                self.pool.drop(lambda job: job.generation != self.generation)  # requeued elsewhere by the broker
                batch = self.pool.next_batch(parts=1 + self._idle)
                if batch:
                    alone = self._encoding == 0 and not self.pool.has_work()
                    if not alone:
                        self._lock.notify()  # more planned work: an idle thread takes the next batch
                    self._encoding += 1
                    return batch, alone
                if self._untidy and self._encoding == 0 and not self._queued:
                    self._idle += 1
                    woken = self._lock.wait(self.idle_tidy)
                    self._idle -= 1
                    if not woken and self._untidy and self._encoding == 0 and not self._queued:
                        self.tidy()
                    continue
                self._idle += 1
                self._lock.wait()
                self._idle -= 1
            return None

    def tidy(self) -> None:
        """Return the memory the last batches left behind, while no batch runs (the caller holds the lock): the
        engine's buffers after a bulk load (its ``release_memory``, where it has one), then the heap's free
        pages (worker/heap.py)."""
        self._untidy = False
        release = getattr(self.embedder, "release_memory", None)
        if self._tokens_since_release >= RELEASE_TOKENS and release is not None:
            try:
                release()
                self.releases += 1
            except Exception:  # an engine that cannot give memory back keeps serving
                log.exception("release_memory failed")
            self._tokens_since_release = 0
        self._trim_heap()
        self._trimmed_at = time.monotonic()

    def encode(self, batch: list[tuple[PendingJob, int]], alone: bool = True, index: int = 0) -> None:
        """Encode ``batch`` and finish the jobs it completes. A batch that runs beside others goes to the
        engine's ``encode_ids_beside`` where it has one (OpenVINO: a stream of its own rather than every core)."""
        start = time.perf_counter()
        ids = [job.ids[t] for job, t in batch]
        beside = None if alone else getattr(self.embedder, "encode_ids_beside", None)
        try:
            vectors = (beside or self.embedder.encode_ids)(ids)
        except Exception as exc:  # a model failure fails these jobs, not the worker
            log.exception("encode failed")
            with self._lock:
                self._encoding -= 1
                self._untidy = True
                for job in {id(job): job for job, _ in batch}.values():
                    if not job.failed:
                        job.failed = True
                        self._finish(None, {"job": job.job_id, "attempt": job.attempt,
                                            "code": ErrorCode.ENCODE_FAILED.value,
                                            "message": f"the model failed: {type(exc).__name__}"})
                self.pool.drop(lambda job: job.failed)
            return
        spent = time.perf_counter() - start
        with self._lock:
            self._encoding -= 1
            self._untidy = True
            self._tokens_since_release += len(ids) * max(map(len, ids), default=0)
            for row, (job, t) in enumerate(batch):
                if job.failed:
                    continue
                job.vectors[t] = vectors[row]
                job.remaining -= 1
                job.encode_seconds += spent / len(batch)
                if job.remaining == 0 and job.generation == self.generation:
                    if job.normalize:
                        job.vectors = normalize_rows(job.vectors)
                    elif job.options.query is not None and not job.options.raw_scores:
                        job.vectors = self.scorer_activation(job.vectors)
                    self._finish(job, None)
            self.pool.drop(lambda job: job.remaining == 0)
            self.texts_done += len(batch)
            self.batches_by_thread[index] += 1
            self.batch_sizes.observe(len(batch))
            self.busy_seconds += spent
            now = time.monotonic()
            trim = self.pool.has_work() and now - self._trimmed_at > HEAP_TRIM_INTERVAL  # idle: tidy() trims
            if trim:
                self._trimmed_at = now
        if trim:
            self._trim_heap()  # worker/heap.py: else fragmentation grows the worker's memory without end

    def prepare(self, header: dict[str, Any]) -> PendingJob:
        try:
            options = JobOptions.read(header.get("options"))
        except ProtocolError as exc:
            raise InputError(ErrorCode.BAD_REQUEST.value, str(exc)) from None
        texts, chunks = header["texts"], None
        scorer = self.embedder if isinstance(self.embedder, PairScorer) else None
        if (options.query is not None) != (scorer is not None):
            raise InputError(ErrorCode.BAD_REQUEST.value, "this worker's model is a reranker: it scores a query "
                             "against texts" if scorer is not None else "this worker's model does not rerank")
        if options.chunk is not None:  # embed each text's chunks instead of the text: see worker/chunking.py
            texts, chunks = self.chunk(texts, options.chunk, options.prompt)
        if options.prompt:  # as sentence-transformers does: the prompt before the text, its tokens pooled too
            texts = [options.prompt + text for text in texts]
        if scorer is not None and options.query is not None:
            tokenized = scorer.tokenize_pairs(options.query, texts)
        else:
            tokenized = self.embedder.tokenize(texts)
        if tokenized.truncated and not options.truncate:
            # the indices are this job's; the front offsets them to the request's
            raise InputError(ErrorCode.INPUT_TOO_LONG.value,
                             f"{len(tokenized.truncated)} input(s) longer than {self.embedder.max_tokens} tokens",
                             indices=tokenized.truncated, max_tokens=self.embedder.max_tokens)
        if options.tokenize:  # counted as the chunker counts (token_spans), with the special tokens
            counts = [len(self.embedder.token_spans(text)) + self.embedder.special_tokens for text in texts]
            return PendingJob(header["job"], header["attempt"], False, tokenized.ids, tokenized.truncated, 0,
                              options, chunks=chunks, counts=counts)
        return PendingJob(header["job"], header["attempt"], header["normalize"], tokenized.ids,
                          tokenized.truncated, self.embedder.dim, options, chunks=chunks)

    def chunk(self, texts: list[str], option: ChunkOption, prompt: str | None = None
              ) -> tuple[list[str], list[list[int]]]:
        """Each text's chunks; with a ``prompt``, chunks that leave room for it within the model's limit."""
        prompt_tokens = len(self.embedder.token_spans(prompt)) if prompt else 0
        plan = ChunkPlan.from_option(option, self.embedder.max_tokens - self.embedder.special_tokens - prompt_tokens)
        try:
            return chunk_texts(texts, self.embedder.token_spans, plan)
        except NotImplementedError:  # a slow (pure Python) tokenizer gives no character offsets
            raise InputError(ErrorCode.BAD_REQUEST.value, "this model's tokenizer cannot chunk text") from None

    def scorer_activation(self, scores: Any) -> Any:
        """A reranker's activation on a job's raw scores (CrossEncoder.predict's)."""
        assert isinstance(self.embedder, PairScorer)
        return self.embedder.activate(scores)

    def _finish(self, job: PendingJob | None, error: dict[str, Any] | None) -> None:
        self.done.append((job, error))
        with contextlib.suppress(OSError):
            self._wake.send(b"\0")


class InputError(Exception):
    def __init__(self, code: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.code = code
        self.details = details  # structured fields of the ERROR header, e.g. indices


class WorkerLoop:
    """The I/O side: registration, heartbeats, reconnects, and moving jobs between broker and compute."""

    def __init__(self, settings: WorkerSettings, embedder: Embedder, info: dict[str, Any],
                 context: zmq.Context | None = None, on_event: Any = None) -> None:
        self.settings = settings
        self.embedder = embedder
        self.info = info
        self.context = context or zmq.Context.instance()
        self.on_event = on_event or (lambda event_type, data: None)
        self.worker_id = settings.worker_id or f"{socket.gethostname()}-{os.getpid()}"
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        budget = settings.token_budget or default_token_budget(embedder.device)
        self.compute = ComputeThreads(embedder, budget, settings.max_batch, self._wake_w,
                                     threads=settings.compute_threads or 1)
        self.capacity = settings.capacity or default_capacity(embedder.device)
        self.sock: zmq.Socket | None = None
        self.registered = False
        self.broker_id: str | None = None
        self.refused: str | None = None
        self._stop = threading.Event()
        # the broker decides the heartbeat timing (its WELCOME carries it); these hold until then
        self.heartbeat_interval = protocol.HEARTBEAT_INTERVAL
        self.heartbeat_liveness = protocol.HEARTBEAT_LIVENESS
        self.probe = protocol.encode_vectors(
            normalize_rows(embedder.encode_ids(embedder.tokenize(PROBE_TEXTS[:2]).ids)).mean(axis=0)[None, :]
        )

    def stop(self) -> None:
        self._stop.set()

    def ready_header(self) -> dict[str, Any]:
        e = self.embedder
        stats = self.stats()
        return {
            "model": e.model_id, "dim": e.dim, "device": e.device, "capacity": self.capacity,
            "precision": e.precision, "backend": e.backend,
            "compute_threads": self.compute.threads, "max_tokens": e.max_tokens, "worker_id": self.worker_id,
            "pid": os.getpid(), "host": socket.gethostname(), "version": VERSION, "probe": self.probe,
            "stats": stats, **self.info,
        }

    def stats(self) -> dict[str, Any]:
        busy = self.compute.busy_seconds / self.compute.threads  # the threads' busy time, as wall time
        return {"texts_done": self.compute.texts_done,
                "texts_per_s": round(self.compute.texts_done / busy, 1) if busy > 0 else None,
                "batch_sizes": self.compute.batch_sizes.snapshot(),
                "batches_by_thread": list(self.compute.batches_by_thread),
                **({"engine_passes": dict(passes)} if (passes := getattr(self.compute.embedder, "passes", None))
                   else {})}

    def connect(self) -> None:
        if self.sock is not None:
            self.sock.close(linger=0)
        sock = sockets.configure(self.context.socket(zmq.DEALER))
        sock.setsockopt(zmq.IDENTITY, f"{self.worker_id}/{uuid.uuid4().hex[:8]}".encode())
        if self.settings.broker_key:
            from embed_common.curve import configure_curve_client

            configure_curve_client(sock, self.settings.broker_key, self.settings.key)
        sock.connect(self.settings.broker)
        self.sock = sock
        self.registered = False
        self.compute.reset()
        self.send(Command.READY, self.ready_header())

    def send(self, command: Command, header: dict[str, Any], *payload: bytes) -> None:
        assert self.sock is not None
        try:
            self.sock.send_multipart(protocol.encode(command, header, *payload), zmq.NOBLOCK)
        except zmq.Again:
            log.debug("broker not reachable: %s not sent", command.name)

    def run(self) -> int:
        """Serve until stopped or refused; return the process exit code."""
        self.compute.start()
        backoff = 1.0
        self.connect()
        broker_seen = time.monotonic()
        next_heartbeat = time.monotonic() + self.heartbeat_interval
        poller = zmq.Poller()
        poller.register(self._wake_r, zmq.POLLIN)
        assert self.sock is not None
        current = self.sock
        poller.register(current, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                if self.sock is not current:
                    poller.unregister(current)
                    current = self.sock
                    poller.register(current, zmq.POLLIN)
                interval = self.heartbeat_interval  # a WELCOME may have changed it
                next_heartbeat = min(next_heartbeat, time.monotonic() + interval)
                events = dict(poller.poll(max(0, int((next_heartbeat - time.monotonic()) * 1000))))
                if current in events:
                    while True:
                        try:
                            frames = current.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        broker_seen = time.monotonic()
                        backoff = 1.0
                        if self.handle(frames) is False:
                            return ExitCode.REFUSED
                if self._wake_r.fileno() in events or self.compute.done:
                    self.flush_results()
                now = time.monotonic()
                if now >= next_heartbeat:
                    self.send(Command.HEARTBEAT, {"stats": self.stats()})
                    next_heartbeat = now + interval
                if now - broker_seen > interval * self.heartbeat_liveness:
                    log.warning("broker silent for %.1fs: reconnecting (next try in %.0fs)",
                                now - broker_seen, backoff)
                    if self.registered:
                        self.on_event("worker_disconnected", {"worker": self.worker_id})
                    self.connect()
                    broker_seen = now + backoff  # give the new connection this long before the next try
                    backoff = min(backoff * 2, self.settings.reconnect_max)
            if self.sock is not None and self.registered:
                self.send(Command.DISCONNECT, {})
            return ExitCode.OK
        finally:
            self.compute.stop()
            if self.sock is not None:
                self.sock.close(linger=100)
            self._wake_r.close()
            self._wake_w.close()  # a batch that finishes after this is not sent: its wake-up is suppressed

    def handle(self, frames: list[bytes]) -> bool:
        try:
            message = protocol.decode(frames)
        except ProtocolError as exc:
            log.warning("dropped a bad message from the broker: %s", exc)
            return True
        command, header = message.command, message.header
        if command is Command.JOB:
            if self.registered:
                try:
                    texts = message.texts()  # the broker passed the front's texts frame on unread
                except ProtocolError as exc:
                    self.compute.reject(header, ErrorCode.BAD_REQUEST.value, str(exc))
                else:
                    self.compute.submit({**header, "texts": texts})
        elif command is Command.WELCOME:
            first = self.broker_id is None
            self.registered = True
            if header["broker_id"] != self.broker_id:
                self.compute.reset()
            self.broker_id = header["broker_id"]
            self.adopt_heartbeat(header)
            self.on_event("worker_ready" if first else "worker_reconnected",
                          {"worker": self.worker_id, "device": self.embedder.device,
                           "precision": self.embedder.precision, "pid": os.getpid()})
        elif command is Command.REFUSED:
            self.refused = header["message"]
            log.error("the broker refused this worker: %s", header["message"])
            self.on_event("worker_refused", {"worker": self.worker_id, "code": header["code"],
                                             "message": header["message"]})
            return False
        elif command is Command.DISCONNECT:
            log.warning("broker asked us to register again: %s", header.get("reason"))
            self.registered = False
            self.compute.reset()
            self.send(Command.READY, self.ready_header())
        return True

    def adopt_heartbeat(self, welcome: dict[str, Any]) -> None:
        """Heartbeat at the broker's pace: its WELCOME says how often, and after how many misses it gives up."""
        interval, liveness = welcome.get("heartbeat_interval"), welcome.get("heartbeat_liveness")
        if isinstance(interval, (int, float)) and not isinstance(interval, bool) and 0 < interval <= 60:
            self.heartbeat_interval = float(interval)
        if isinstance(liveness, int) and not isinstance(liveness, bool) and liveness >= 1:
            self.heartbeat_liveness = liveness

    def flush_results(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass
        while self.compute.done:
            job, error = self.compute.done.popleft()
            if error is not None:
                self.send(Command.ERROR, error)
                continue
            assert job is not None
            header: dict[str, Any] = {
                "job": job.job_id, "attempt": job.attempt, "n": len(job.ids), "dim": job.dim,
                "encode_ms": round(job.encode_seconds * 1000, 3), "tokens": job.tokens,
            }
            header["row_tokens"] = [len(seq) for seq in job.ids]  # what the front's vector cache keeps of each row
            if self.info.get("fingerprint"):
                header["fingerprint"] = self.info["fingerprint"]
            if job.truncated:
                header["truncated"] = job.truncated
            if job.chunks is not None:  # a row per vector: [index of its text in the job, start, end]
                header["chunks"] = job.chunks
            if job.counts is not None:  # a tokenize job: its counts and the ids the model would be fed
                header["counts"] = job.counts
                header["ids"] = job.ids
            encoding = job.options.encoding
            if encoding is not Encoding.F32:
                header["encoding"] = encoding.value
            self.send(Command.RESULT, header, protocol.encode_vectors(job.vectors, encoding))


def default_capacity(device: str) -> int:
    return 1024 if device.startswith("cuda") else 256


def default_token_budget(device: str) -> int:
    """Padded tokens per batch: a bound on a batch's activation memory. On CPU, a budget of this size keeps a
    worker's peak memory down at the same speed, since a pass's fixed cost is a small share of such a batch
    (compare budgets with `python bench/run.py` and the cost model with `python bench/calibrate.py`)."""
    return 65536 if device.startswith("cuda") else 1536
