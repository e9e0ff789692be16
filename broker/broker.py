"""The broker: a queue of jobs per model, a table of jobs in flight, and a registry of workers.

A cluster serves one or more models (embed_common/models.py), each in a :class:`Pool`: its queue, its workers
and the reference (model, dimensions, probe) a worker must match to join it. A job names its pool (the SUBMIT's
``model``; none: the default, first one), and only that pool's workers are ever given it.

One thread owns every socket and runs :meth:`Broker.run`'s poll loop. Fronts submit jobs on the *client*
socket; workers register and take jobs on the *worker* sockets (local, and optionally a CurveZMQ one for the
LAN). A job is handed to the worker that would finish it first, within its credit (broker.balancing); a reply is
accepted only from the worker and attempt that hold the job, so late replies from a presumed-dead worker are
dropped. When a worker dies or overstays a job's lease, its jobs go back to the front of the queue.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zmq

from broker import balancing
from embed_common import protocol, sockets
from embed_common.models import ModelSpec, short_name
from embed_common.protocol import Command, ErrorCode, JobOptions, Message, ProtocolError
from embed_common.settings import default

log = logging.getLogger(__name__)

WorkerKey = tuple[str, bytes]  # (socket name, ZeroMQ identity)

PROBE_MIN_COSINE = 0.99  # two workers whose probe vectors differ more than this serve different models


ENVELOPE_FRAMES = 4  # identity, protocol tag, command, header: what the broker reads of a message
SWEEP_INTERVAL = 0.02  # seconds between looks for dead workers, expired leases and expired queued jobs


@dataclass(frozen=True)
class BrokerSettings:
    client_address: str
    worker_address: str
    lan_address: str | None = None
    keys_dir: str | None = None
    models: tuple[ModelSpec, ...] = ()  # a pool each, the default first; none: the first worker's model is the one
    heartbeat_interval: float = protocol.HEARTBEAT_INTERVAL
    heartbeat_liveness: int = protocol.HEARTBEAT_LIVENESS
    job_lease: float = default("job-lease", "broker")  # a worker that holds a job longer is presumed stuck
    max_queue_texts: int = default("max-queue-texts", "broker")
    max_crashes: int = 2  # a job whose attempts killed this many workers fails as WORKER_CRASHED
    no_worker_grace: float = 10.0  # queued jobs wait this long for a worker to come back


@dataclass
class Pool:
    """One model's share of the broker: the jobs that wait for its workers, and what its workers must serve."""

    name: str  # the model's alias (requests and jobs name the pool by it); "" until a model without one is known
    model: str | None  # the model id its workers must serve; None: whatever the first worker serves
    queue: deque[Job] = field(default_factory=deque)
    reference: dict[str, Any] | None = None  # model, model_name, dim, probe, max_tokens, kind: its first worker's
    ever_ready: bool = False
    no_workers_since: float | None = field(default_factory=time.monotonic)

    def names(self) -> set[str]:
        """What a request may call this model: its alias, its id and short name, and its workers' model id."""
        found = {self.name} if self.name else set()
        for model in (self.model, (self.reference or {}).get("model")):
            if model:
                found |= {model, short_name(model)}
        return found

    def queued_texts(self) -> int:
        return sum(job.count for job in self.queue)


@dataclass
class Job:
    job_id: str
    client: bytes
    pool: Pool
    normalize: bool
    options: JobOptions
    deadline: float
    count: int = 0  # texts in the job
    payload: list[Any] = field(default_factory=list)  # the texts frame, passed on to the worker unread (a zmq.Frame)
    attempt: int = 0
    crashes: int = 0
    worker: WorkerKey | None = None
    lease_until: float = 0.0
    enqueued_at: float = field(default_factory=time.monotonic)
    dispatched_at: float = 0.0


@dataclass
class Worker:
    key: WorkerKey
    info: dict[str, Any]
    capacity: int
    expiry: float
    pool: Pool
    inflight: dict[str, Job] = field(default_factory=dict)
    inflight_texts: int = 0
    last_dispatch: float = 0.0
    served_texts: int = 0
    stats: dict[str, Any] = field(default_factory=dict)
    isolated: bool = False  # holds a job that already crashed a worker: it gets nothing else meanwhile

    @property
    def worker_id(self) -> str:
        return str(self.info.get("worker_id") or self.key[1].hex())

    def describe(self, peers: Iterable[Worker] = ()) -> dict[str, Any]:
        info = self.info
        return {
            "id": self.worker_id,
            "model": self.pool.name,
            "state": "busy" if self.inflight else "ready",
            "device": info.get("device"),
            "precision": info.get("precision"),
            "backend": info.get("backend"),
            "fingerprint": info.get("fingerprint"),  # of its model's files: the front's vector cache keys on it
            "cosine": info.get("cosine"),  # its vectors' least cosine to fp32 sentence-transformers (the check)
            "compute_threads": info.get("compute_threads"),
            "host": info.get("host"),
            "pid": info.get("pid"),
            "remote": self.key[0] == "lan",
            "capacity": self.capacity,
            "credit": balancing.credit(self, peers),
            "inflight_texts": self.inflight_texts,
            "served_texts": self.served_texts,
            "texts_per_s": self.stats.get("texts_per_s"),
            "engine_passes": self.stats.get("engine_passes"),  # OpenVINO: passes alone, passes beside each other
        }


class Broker:
    def __init__(self, settings: BrokerSettings, context: zmq.Context | None = None) -> None:
        self.settings = settings
        self.context = context or zmq.Context.instance()
        self.broker_id = uuid.uuid4().hex
        self.pools = [Pool(spec.alias, spec.model) for spec in settings.models] or [Pool("", None)]
        self.jobs: dict[str, Job] = {}
        self.workers: dict[WorkerKey, Worker] = {}
        self.sockets: dict[str, zmq.Socket] = {}
        self.counters = {"submitted": 0, "answered": 0, "failed": 0, "requeued": 0, "dropped_frames": 0,
                         "late_replies": 0, "cancelled": 0}
        self.workers_down: list[dict[str, Any]] = []  # the supervisor's local workers that do not serve now
        self.seen_processes: dict[str, tuple[Any, Any]] = {}  # worker id -> (host, pid) it last registered from
        self.restarts: dict[str, int] = {}  # worker id -> times it registered again from a new process
        self.refused: deque[dict[str, Any]] = deque(maxlen=20)  # the last refusals, for the front's status page
        self._stop = False

    # -- sockets --------------------------------------------------------------------------------------
    def bind(self) -> None:
        s = self.settings
        self.sockets["client"] = self._router(s.client_address)
        self.sockets["local"] = self._router(s.worker_address)
        if s.lan_address:
            from broker.security import lan_router  # CurveZMQ + ZAP, only when asked for

            self.sockets["lan"] = lan_router(self.context, s.lan_address, s.keys_dir)

    def _router(self, address: str) -> zmq.Socket:
        sock = sockets.configure_router(self.context.socket(zmq.ROUTER))
        sock.bind(address)
        return sock

    def stop(self) -> None:
        self._stop = True

    def close(self) -> None:
        for sock in self.sockets.values():
            sock.close(linger=0)
        self.sockets.clear()

    # -- the loop ---------------------------------------------------------------------------------------
    def run(self) -> None:
        if not self.sockets:
            self.bind()
        poller = zmq.Poller()
        names = {sock: name for name, sock in self.sockets.items()}
        for sock in self.sockets.values():
            poller.register(sock, zmq.POLLIN)
        next_heartbeat = next_sweep = time.monotonic()
        log.info("broker %s ready: clients on %s, workers on %s", self.broker_id[:8],
                 self.settings.client_address, self.settings.worker_address)
        while not self._stop:
            timeout_ms = max(0, int((next_heartbeat - time.monotonic()) * 1000))
            for sock, _ in poller.poll(min(timeout_ms, 250)):
                for _ in range(1000):  # drain, bounded so that heartbeats keep their time
                    try:
                        frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    self.handle(names[sock], sockets.received(frames, ENVELOPE_FRAMES))
            now = time.monotonic()
            if now >= next_heartbeat:
                self.send_heartbeats()
                next_heartbeat = now + self.settings.heartbeat_interval
            if now >= next_sweep:  # deadlines are seconds long: a sweep each turn only costs CPU under load
                self.purge_workers(now)
                self.expire_queue(now)
                next_sweep = now + SWEEP_INTERVAL
            self.dispatch()

    def handle(self, socket_name: str, frames: list[bytes]) -> None:
        if len(frames) < 2:
            self._drop(socket_name, b"", "too few frames")
            return
        identity, body = frames[0], frames[1:]
        try:
            message = protocol.decode(body)
        except ProtocolError as exc:
            self._drop(socket_name, identity, str(exc))
            return
        if socket_name == "client":
            self.handle_client(identity, message)
        else:
            self.handle_worker((socket_name, identity), message)

    def _drop(self, socket_name: str, identity: bytes, why: str) -> None:
        self.counters["dropped_frames"] += 1
        log.warning("dropped a bad message on %s from %s: %s", socket_name, identity.hex()[:16], why)

    # -- clients (fronts, supervisor) -------------------------------------------------------------------
    def handle_client(self, client: bytes, message: Message) -> None:
        header = message.header
        if message.command is Command.SUBMIT:
            self.submit(client, message)
        elif message.command is Command.CANCEL:
            self.cancel(header["job"])
        elif message.command is Command.STATUS:
            self.send("client", client, Command.STATUS, {"req": header["req"], **self.status()})
        elif message.command is Command.WORKER_GONE:
            self.worker_gone(header["pid"], header.get("host"))
        elif message.command is Command.WORKERS_DOWN:
            self.workers_down = [w for w in header["workers"] if isinstance(w, dict) and isinstance(w.get("id"), str)]
        else:
            self._drop("client", client, f"{message.command.name} is not a client command")

    def submit(self, client: bytes, message: Message) -> None:
        header = message.header
        job_id = header["job"]
        if job_id in self.jobs:  # a front re-sent a job we still hold (after it saw us restart): keep one
            self.jobs[job_id].client = client
            return
        try:
            options = message.options()
        except ProtocolError as exc:
            self.fail(client, job_id, ErrorCode.BAD_REQUEST, str(exc))
            return
        pool = self.pool_named(header.get("model"))
        if pool is None:
            self.fail(client, job_id, ErrorCode.MODEL_NOT_FOUND, f"the model {str(header.get('model'))[:200]!r} is "
                      f"not served here; this cluster serves {', '.join(self.model_names())}")
            return
        count = message.text_count()
        now = time.monotonic()
        if not self.pool_workers(pool) and self._no_workers_for(pool, now) >= self.settings.no_worker_grace:
            self.fail(client, job_id, ErrorCode.NO_WORKERS, self._no_workers_message(pool))
            return
        if self.queued_texts() + count > self.settings.max_queue_texts:
            self.fail(client, job_id, ErrorCode.OVERLOADED, "the queue is full; retry later")
            return
        job = Job(job_id, client, pool, header["normalize"], options,
                  deadline=now + max(0, header["timeout_ms"]) / 1000, count=count, payload=message.payload)
        self.jobs[job_id] = job
        pool.queue.append(job)
        self.counters["submitted"] += 1

    def pool_named(self, name: Any) -> Pool | None:
        """The pool a SUBMIT's ``model`` names (its alias, id or short name); no name: the default pool."""
        if name is None:
            return self.pools[0]
        if not isinstance(name, str):
            return None
        return next((pool for pool in self.pools if name in pool.names()), None)

    def model_names(self) -> list[str]:
        return [pool.name or (pool.model or "(not known yet)") for pool in self.pools]

    def pool_workers(self, pool: Pool) -> list[Worker]:
        return [w for w in self.workers.values() if w.pool is pool]

    def cancel(self, job_id: str) -> None:
        job = self.jobs.get(job_id)
        if job is not None and job.worker is None:
            job.pool.queue.remove(job)
            del self.jobs[job_id]
            self.counters["cancelled"] += 1  # dropped before any compute (its client timed out or went away)

    def fail(self, client: bytes, job_id: str, code: ErrorCode, message: str) -> None:
        self.counters["failed"] += 1
        self.send("client", client, Command.ERROR, {"job": job_id, "code": code.value, "message": message})

    def queued_texts(self) -> int:
        return sum(pool.queued_texts() for pool in self.pools)

    def _no_workers_for(self, pool: Pool, now: float) -> float:
        """How long no worker of ``pool`` has served; 0 while the supervisor restarts one (queued jobs wait for
        it, up to their own deadline, rather than fail NO_WORKERS after the grace). A down worker's report names
        its model; one that names none (an older supervisor) counts for every pool."""
        restarting = any(w.get("state") == "restarting" and w.get("model", pool.name) == pool.name
                         for w in self.down_workers())
        if pool.no_workers_since is None or restarting:
            return 0.0
        return now - pool.no_workers_since

    def _no_workers_message(self, pool: Pool) -> str:
        which = f" of {pool.name}" if len(self.pools) > 1 else ""
        if not pool.ever_ready:
            return f"no worker{which} has registered yet (the model may still be loading)"
        return f"no worker{which} is alive"

    def status(self) -> dict[str, Any]:
        ref = self.pools[0].reference or {}
        return {
            "broker_id": self.broker_id,
            "ever_ready": any(pool.ever_ready for pool in self.pools),
            "model": ref.get("model"),  # the default model's (the seed's fields); every model's in "models"
            "model_name": ref.get("model_name"),
            "dim": ref.get("dim"),
            "max_tokens": ref.get("max_tokens"),
            "models": [self.describe_pool(pool) for pool in self.pools],
            "workers": [w.describe(self.pool_workers(w.pool)) for w in self.workers.values()],
            "workers_down": self.down_workers(),
            "queue_jobs": sum(len(pool.queue) for pool in self.pools),
            "queue_texts": self.queued_texts(),
            "max_queue_texts": self.settings.max_queue_texts,
            "counters": dict(self.counters),
            "worker_restarts": dict(self.restarts),
            "worker_stats": {w.worker_id: w.stats for w in self.workers.values()},
            "refused": list(self.refused),
        }

    def describe_pool(self, pool: Pool) -> dict[str, Any]:
        ref = pool.reference or {}
        return {"alias": pool.name or ref.get("model_name"), "model": ref.get("model") or pool.model,
                "model_name": ref.get("model_name") or (short_name(pool.model) if pool.model else None),
                "kind": ref.get("kind"), "dim": ref.get("dim"), "max_tokens": ref.get("max_tokens"),
                "prompts": ref.get("prompts"), "default_prompt_name": ref.get("default_prompt_name"),
                "ever_ready": pool.ever_ready, "workers": len(self.pool_workers(pool)),
                "queue_texts": pool.queued_texts()}

    def down_workers(self) -> list[dict[str, Any]]:
        """The supervisor's report of local workers that do not serve, less those registered since."""
        serving = {w.worker_id for w in self.workers.values()}
        return [w for w in self.workers_down if w["id"] not in serving]

    # -- workers ----------------------------------------------------------------------------------------
    def handle_worker(self, key: WorkerKey, message: Message) -> None:
        command, header = message.command, message.header
        if command is Command.READY:
            self.register(key, header)
            return
        worker = self.workers.get(key)
        if worker is None:
            if command is Command.RESULT or command is Command.ERROR:
                self._late_reply(header, "from a worker presumed dead")
            if command is not Command.DISCONNECT:
                # we do not know this worker (we restarted, or presumed it dead): ask it to register again
                self.send(key[0], key[1], Command.DISCONNECT, {"reason": "unknown worker; register again"})
            return
        worker.expiry = time.monotonic() + self.settings.heartbeat_interval * self.settings.heartbeat_liveness
        if command is Command.HEARTBEAT:
            if isinstance(header.get("stats"), dict):
                worker.stats = header["stats"]
        elif command is Command.RESULT or command is Command.ERROR:
            self.complete(worker, message)
        elif command is Command.DISCONNECT:
            self.remove_worker(worker, crashed=False, why="it disconnected")
        else:
            self._drop(key[0], key[1], f"{command.name} is not a worker command")

    def register(self, key: WorkerKey, info: dict[str, Any]) -> None:
        if key in self.workers:  # re-registration: whatever it held is lost
            self.remove_worker(self.workers[key], crashed=False, why="it registered again")
        pool, refusal = self._pool_for(info)
        if refusal or pool is None:
            log.warning("refused worker %s (%s on %s): %s", info.get("worker_id"), info.get("model"),
                        info.get("host"), refusal)
            self.refused.append({"at": round(time.time(), 3), "worker": info.get("worker_id"),
                                 "host": info.get("host"), "reason": refusal})
            self.send(key[0], key[1], Command.REFUSED, {"code": ErrorCode.MODEL_MISMATCH.value,
                                                         "message": refusal or "no pool"})
            return
        capacity = max(1, info["capacity"])
        expiry = time.monotonic() + self.settings.heartbeat_interval * self.settings.heartbeat_liveness
        worker = Worker(key, {k: v for k, v in info.items() if k != "probe"}, capacity, expiry, pool)
        if isinstance(info.get("stats"), dict):
            worker.stats = info["stats"]
        self.workers[key] = worker
        self._count_restart(worker)
        pool.ever_ready = True
        pool.no_workers_since = None
        self.send(key[0], key[1], Command.WELCOME, {
            "broker_id": self.broker_id,
            "heartbeat_interval": self.settings.heartbeat_interval,
            "heartbeat_liveness": self.settings.heartbeat_liveness,
        })
        log.info("worker %s registered: %s on %s (%s), capacity %d texts", worker.worker_id,
                 info.get("model"), info.get("device"), info.get("host"), capacity)

    def _count_restart(self, worker: Worker) -> None:
        """A worker id that registers from another process than last time was restarted (by whoever runs it)."""
        process = (worker.info.get("host"), worker.info.get("pid"))
        previous = self.seen_processes.get(worker.worker_id)
        if previous is not None and previous != process:
            self.restarts[worker.worker_id] = self.restarts.get(worker.worker_id, 0) + 1
        self.seen_processes[worker.worker_id] = process

    def _pool_for(self, info: dict[str, Any]) -> tuple[Pool | None, str | None]:
        """The pool a registering worker joins (by its model's name), or why it is refused."""
        name = short_name(info["model"])
        expected = [pool for pool in self.pools if pool.model is not None]
        if expected:
            pool = next((p for p in expected if short_name(p.model or "") == name), None)
            if pool is None:
                served = ", ".join(short_name(p.model or "") for p in expected)
                return None, f"this cluster serves {served}, the worker serves {name}"
        else:
            pool = self.pools[0]
        return pool, self._check_model(pool, info)

    def _check_model(self, pool: Pool, info: dict[str, Any]) -> str | None:
        name = short_name(info["model"])
        probe = info.get("probe")
        ref = pool.reference
        if ref is None:
            pool.reference = {"model": info["model"], "model_name": name, "dim": info["dim"], "probe": probe,
                              "max_tokens": info.get("max_tokens"), "kind": info.get("kind", "embed"),
                              "prompts": info.get("prompts"), "default_prompt_name": info.get("default_prompt_name")}
            pool.name = pool.name or name
            return None
        if name != ref["model_name"] or info["dim"] != ref["dim"]:
            return (f"this cluster serves {ref['model_name']} ({ref['dim']} dimensions), "
                    f"the worker serves {name} ({info['dim']} dimensions)")
        if isinstance(probe, bytes) and isinstance(ref.get("probe"), bytes):
            a = np.frombuffer(probe, dtype="<f4")
            b = np.frombuffer(ref["probe"], dtype="<f4")
            if a.shape != b.shape:
                return "the worker's probe vector has another shape: a different model"
            cosine = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))
            if cosine < PROBE_MIN_COSINE:
                return f"same name, but its vectors differ from the cluster's (cosine {cosine:.3f})"
        return None

    def remove_worker(self, worker: Worker, crashed: bool, why: str) -> None:
        self.workers.pop(worker.key, None)
        log.warning("worker %s removed: %s; requeueing %d jobs", worker.worker_id, why, len(worker.inflight))
        # put its jobs back at the front of the queue, oldest first, with a new attempt number
        for job in sorted(worker.inflight.values(), key=lambda j: j.enqueued_at, reverse=True):
            job.worker = None
            job.attempt += 1
            if crashed:
                job.crashes += 1
            if job.crashes >= self.settings.max_crashes:
                del self.jobs[job.job_id]
                self.fail(job.client, job.job_id, ErrorCode.WORKER_CRASHED,
                          f"this input crashed {job.crashes} workers; it is not retried")
                continue
            self.counters["requeued"] += 1
            job.pool.queue.appendleft(job)
        worker.inflight.clear()
        if not self.pool_workers(worker.pool):
            worker.pool.no_workers_since = time.monotonic()

    def worker_gone(self, pid: int, host: str | None) -> None:
        """The supervisor saw a local worker's process exit: requeue its jobs now, not at heartbeat expiry."""
        for worker in list(self.workers.values()):
            if worker.key[0] == "local" and worker.info.get("pid") == pid and worker.info.get("host") == host:
                self.remove_worker(worker, crashed=True, why=f"its process {pid} exited")

    def _late_reply(self, header: dict[str, Any], why: str) -> None:
        self.counters["late_replies"] += 1
        log.info("dropped a late reply %s: job %s attempt %s", why, header.get("job"), header.get("attempt"))

    def _result_mismatch(self, job: Job, header: dict[str, Any]) -> str | None:
        """Why a RESULT cannot be the answer to ``job`` (rows or dimension), or None when it can."""
        chunks = header.get("chunks")
        rows = len(chunks) if job.options.chunk is not None and isinstance(chunks, list) else job.count
        if header["n"] != rows:
            return f"{header['n']} vectors for {rows} inputs"
        dim = 0 if job.options.tokenize else (job.pool.reference or {}).get("dim")  # a tokenize job: no vectors
        if dim is not None and header["n"] and header["dim"] != dim:
            return f"{header['dim']} dimensions, the model has {dim}"
        return None

    def complete(self, worker: Worker, message: Message) -> None:
        header = message.header
        job = worker.inflight.get(header["job"])
        if job is None or header.get("attempt") != job.attempt:
            self._late_reply(header, "for an attempt no longer in flight")
            return
        del worker.inflight[job.job_id]
        worker.inflight_texts -= job.count
        worker.isolated = False
        del self.jobs[job.job_id]
        mismatch = self._result_mismatch(job, header) if message.command is Command.RESULT else None
        if mismatch:
            log.error("worker %s answered job %s wrongly: %s", worker.worker_id, job.job_id, mismatch)
            self.counters["failed"] += 1
            self.send("client", job.client, Command.ERROR, {"job": job.job_id, "code": ErrorCode.ENCODE_FAILED.value,
                                                            "message": f"a worker answered wrongly: {mismatch}"})
        elif message.command is Command.RESULT:
            worker.served_texts += job.count
            self.counters["answered"] += 1
            now = time.monotonic()
            reply = {
                "job": job.job_id, "n": header["n"], "dim": header["dim"], "worker": worker.worker_id,
                "queue_ms": round((job.dispatched_at - job.enqueued_at) * 1000, 3),
                "worker_ms": round((now - job.dispatched_at) * 1000, 3),
            }
            for extra in ("encoding", "encode_ms", "truncated", "tokens", "row_tokens", "fingerprint", "chunks",
                          "counts", "ids"):
                if extra in header:
                    reply[extra] = header[extra]
            self.send("client", job.client, Command.RESULT, reply, *message.payload)
        else:
            self.counters["failed"] += 1
            error = {"job": job.job_id, "code": header["code"], "message": header["message"]}
            for extra in ("indices", "max_tokens"):  # structured details, e.g. INPUT_TOO_LONG's job-local indices
                if extra in header:
                    error[extra] = header[extra]
            self.send("client", job.client, Command.ERROR, error)

    def dispatch(self) -> None:
        for pool in self.pools:
            if pool.queue:
                self._dispatch(pool)

    def _dispatch(self, pool: Pool) -> None:
        """Hand ``pool``'s queued jobs, oldest first, to its own workers while one should take the next."""
        now = time.monotonic()
        backlog = pool.queued_texts()
        workers = self.pool_workers(pool)
        while pool.queue:
            job = pool.queue[0]
            worker = self._pick_worker(workers, job, backlog)
            if worker is None:
                return
            pool.queue.popleft()
            backlog -= job.count
            job.worker = worker.key
            job.dispatched_at = now
            job.lease_until = now + self.settings.job_lease
            worker.inflight[job.job_id] = job
            worker.inflight_texts += job.count
            worker.last_dispatch = now
            worker.isolated = job.crashes > 0
            header: dict[str, Any] = {"job": job.job_id, "attempt": job.attempt, "n": job.count,
                                      "normalize": job.normalize}
            options = job.options.wire()
            if options:
                header["options"] = options
            self.send(worker.key[0], worker.key[1], Command.JOB, header, *job.payload)

    @staticmethod
    def _pick_worker(workers: list[Worker], job: Job, backlog: int) -> Worker | None:
        """Which of ``workers`` (the job's pool's) should take ``job`` now given ``backlog`` queued texts of its
        pool (broker.balancing), or None."""
        candidates = [w for w in workers if not (w.isolated or (job.crashes > 0 and w.inflight))]
        return balancing.pick(candidates, job.count, backlog)

    def send_heartbeats(self) -> None:
        for worker in self.workers.values():
            self.send(worker.key[0], worker.key[1], Command.HEARTBEAT, {})

    def purge_workers(self, now: float) -> None:
        for worker in list(self.workers.values()):
            if worker.expiry < now:
                self.remove_worker(worker, crashed=True, why="it stopped answering heartbeats")
            elif any(job.lease_until < now for job in worker.inflight.values()):
                self.remove_worker(worker, crashed=True, why="it held a job past its lease")
                self.send(worker.key[0], worker.key[1], Command.DISCONNECT, {"reason": "job lease expired"})

    def expire_queue(self, now: float) -> None:
        for pool in self.pools:
            if pool.queue:
                self._expire(pool, now)

    def _expire(self, pool: Pool, now: float) -> None:
        if not self.pool_workers(pool) and self._no_workers_for(pool, now) >= self.settings.no_worker_grace:
            while pool.queue:
                job = pool.queue.popleft()
                del self.jobs[job.job_id]
                self.fail(job.client, job.job_id, ErrorCode.NO_WORKERS, self._no_workers_message(pool))
            return
        if any(job.deadline < now for job in pool.queue):
            for job in [j for j in pool.queue if j.deadline < now]:
                pool.queue.remove(job)
                del self.jobs[job.job_id]
                self.fail(job.client, job.job_id, ErrorCode.TIMEOUT, "the request's deadline passed in the queue")

    def send(self, socket_name: str, identity: bytes, command: Command, header: dict[str, Any],
             *payload: bytes) -> None:
        sock = self.sockets.get(socket_name)
        if sock is None:
            return
        try:
            sock.send_multipart([identity, *protocol.encode(command, header, *payload)], zmq.NOBLOCK, copy=False)
        except zmq.ZMQError as exc:  # peer gone or its queue full: it will be purged by heartbeats
            log.debug("send %s to %s failed: %s", command.name, identity.hex()[:16], exc)

