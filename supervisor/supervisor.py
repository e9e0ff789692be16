"""The supervisor: starts the broker, the front and the workers, relays their PROGRESS events as one
cluster's events on its own stdout, restarts what dies (with backoff), and shuts everything down in order.

Signal handlers only set a flag; the loop in :meth:`Supervisor.run` does the work.
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import IO, Any

import zmq

from embed_common import progress
from embed_common.exits import ExitCode
from embed_common.lifeline import WORKER_STOP_GRACE
from embed_common.models import ModelSpec, parse_models
from embed_common.settings import ENV_ONLY, default
from supervisor.broker_link import BrokerLink
from worker.devices import ThreadPlan, detect_devices, gpu_driver_present, plan_threads

log = logging.getLogger(__name__)

HEALTHY_AFTER = 60.0  # a child that ran this long resets its backoff
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 30.0
FAILED_AFTER = 5  # consecutive quick failures before a worker is reported failed


@dataclass(frozen=True)
class ClusterSettings:
    host: str = default("host", "up")
    port: int = default("port", "up")
    workers: str = default("workers", "up")  # a count, or "auto": one per device; per model
    model: str = default("model", "up")  # one or more [ALIAS=]ID, comma-separated (embed_common/models.py)
    device: str = default("device", "up")
    precision: str = default("precision", "up")
    threads: int = default("threads", "up")
    compute_threads: int = default("compute-threads", "up")  # per worker; 0: CPU cores / CPU workers (1 on a GPU)
    backend: str = default("backend", "up")
    lan: str | None = None
    keys: str | None = None
    shutdown_grace: float = default("shutdown-grace", "up")
    extra_front_args: tuple[str, ...] = ()
    extra_broker_args: tuple[str, ...] = ()
    extra_worker_args: tuple[str, ...] = ()


@dataclass
class Child:
    name: str
    argv: list[str]
    kind: str  # broker, front or worker
    device: str = ""
    model: str = ""  # a worker's model (its alias)
    proc: subprocess.Popen | None = None
    started_at: float = 0.0
    failures: int = 0  # consecutive quick failures
    restart_at: float | None = None
    starts: int = 0
    failed: bool = False
    info: dict[str, Any] = field(default_factory=dict)
    down: dict[str, Any] | None = None  # a worker that exited and does not serve yet: what /health shows


def plan_devices(device: str, workers: str) -> list[str]:
    """One device per worker: ``auto`` is one worker per GPU, else one for MPS, else one CPU worker, whatever
    the cores and ``--threads``: it runs a forward pass on every core at once (compute threads over one copy of
    the model, worker/worker.py), where a second process would hold a second runtime and model (docs/performance.md:
    `python bench/sidecar.py`)."""
    found = detect_devices() if device == "auto" else [device if device != "cuda" else "cuda:0"]
    if workers == "auto":
        return found
    count = int(workers)
    if device == "cuda":
        found = detect_devices()
    return [found[i % len(found)] for i in range(count)]


def child_env(kind: str) -> dict[str, str]:
    """A child's environment: ours, but the secrets (the API key) only for the front, the one part that reads
    them (a worker runs a model's code, which need not see them)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if kind != "front":
        for name in ENV_ONLY:
            env.pop(name, None)
    return env


class Supervisor:
    def __init__(self, settings: ClusterSettings, stdout: IO[str] | None = None) -> None:
        self.settings = settings
        self.stdout = stdout or sys.stdout
        self.events: queue.Queue[tuple[Child, dict[str, Any] | None]] = queue.Queue()
        self.should_exit = threading.Event()
        self.children: list[Child] = []
        self.rundir = tempfile.mkdtemp(prefix="embed-cluster-")
        self.client_address = f"ipc://{self.rundir}/clients.ipc"
        self.worker_address = f"ipc://{self.rundir}/workers.ipc"
        self.models: tuple[ModelSpec, ...] = parse_models(settings.model)  # the default first
        self.emitted: set[str] = set()
        self.front_url: str | None = None
        self.first_ready: dict[str, dict[str, Any]] = {}  # model alias -> its first ready worker's info
        self.front_ready = False  # the front's view of the broker lists a worker of every model: /health says ok
        self.startup_failure: dict[str, Any] | None = None
        self.downloader: dict[str, str | None] = {}  # model alias -> the worker whose download its events follow
        self.context = zmq.Context()
        self.broker_link = BrokerLink(self.context, self.client_address)

    # -- what to start ----------------------------------------------------------------------------------
    def plan(self) -> None:
        s = self.settings
        base = [sys.executable, "-m", "supervisor.cli"]
        parent = ["--parent-pid", str(os.getpid())]
        broker = [*base, "broker", "--clients", self.client_address, "--workers-address", self.worker_address,
                  "--expect-model", ",".join(map(str, self.models))]  # a pool each; no remote brings another model
        if s.lan:
            broker += ["--lan", s.lan]
        if s.keys:
            broker += ["--keys", s.keys]
        self.children.append(Child("broker", [*broker, *s.extra_broker_args, *parent], "broker"))
        front = [*base, "front", "--broker", self.client_address, "--host", s.host, "--port", str(s.port),
                 "--shutdown-grace", str(s.shutdown_grace)]
        self.children.append(Child("front", [*front, *s.extra_front_args, *parent], "front"))
        devices = plan_devices(s.device, s.workers)
        on_cpu = sum(1 for d in devices if d == "cpu")
        # the cores shared out among one model's CPU workers: two models on one CPU each get every core, as a
        # lone request of either is served fastest that way (they compete only while both are busy)
        threads = plan_threads("cpu", s.compute_threads, s.threads, on_cpu)
        for index, spec in enumerate(self.models):
            for i, device in enumerate(devices):
                self.children.append(self._worker(spec, f"worker-{i}" if index == 0 else f"worker-{spec.alias}-{i}",
                                                  device, threads, base, parent))

    def _worker(self, spec: ModelSpec, name: str, device: str, threads: ThreadPlan, base: list[str],
                parent: list[str]) -> Child:
        """One worker process of one model (its own process: docs/models.md says why, with the PSS it costs)."""
        s = self.settings
        argv = [*base, "worker", "--broker", self.worker_address, "--model", spec.model, "--device", device,
                "--precision", s.precision, "--backend", s.backend, "--worker-id", name]
        if device == "cpu":
            argv += ["--threads", str(threads.intra_op), "--compute-threads", str(threads.compute)]
        elif s.threads or s.compute_threads:
            argv += ["--threads", str(s.threads), "--compute-threads", str(s.compute_threads)]
        return Child(name, [*argv, *s.extra_worker_args, *parent], "worker", device, spec.alias)

    # -- events -----------------------------------------------------------------------------------------
    def emit(self, event_type: str, data: dict[str, Any]) -> None:
        progress.emit(event_type, data, self.stdout)

    def emit_once(self, key: str, event_type: str, data: dict[str, Any]) -> None:
        if key not in self.emitted:
            self.emitted.add(key)
            self.emit(event_type, data)

    def _of_model(self, alias: str, data: dict[str, Any]) -> dict[str, Any]:
        """An event's data, naming the model's alias too when the cluster serves several (one: the seed's)."""
        return {**data, "alias": alias} if len(self.models) > 1 else data

    def on_event(self, child: Child, event: dict[str, Any]) -> None:
        kind, data = event["type"], event["data"]
        model = child.model or self.models[0].alias
        if kind in ("model_cached", "download_started"):  # once per model (the cluster's, not each worker's)
            if f"model_cached:{model}" not in self.emitted and f"download_started:{model}" not in self.emitted:
                self.emit_once(f"{kind}:{model}", kind, self._of_model(model, {"model": data.get("model")}))
                self.downloader[model] = child.name if kind == "download_started" else None
        elif kind == "download_progress":
            if child.name == self.downloader.get(model):  # workers that download at once would interleave counts
                self.emit(kind, self._of_model(model, {k: v for k, v in data.items() if k != "worker"}))
        elif kind == "model_loaded" and child.kind == "worker":
            child.info.update(data)
            self.emit("worker_loaded", {**data, "worker": child.name})
        elif kind == "worker_ready":
            child.info["ready"] = True
            child.down = None
            child.failed = False  # serving again; its failures still count until it has run a healthy minute
            self.emit("worker_ready", {**data, "worker": child.name})
            self.first_ready.setdefault(model, child.info)
            self._maybe_cluster_ready()
        elif kind == "front_listening":
            self.front_url = data.get("url")
            self.emit("front_listening", data)
            self._maybe_cluster_ready()
        elif kind == "front_ready" and child.kind == "front":
            self.front_ready = True
            self._maybe_cluster_ready()
        elif kind == "startup_failed":  # a part that can never start (the front cannot bind its port)
            self.fail_startup({**data, "part": data.get("part") or child.kind})
        elif kind in ("worker_failed", "worker_refused", "worker_reconnected", "worker_disconnected",
                      "model_preparing", "model_prepared", "backend_fallback",  # onnx_backend.py, engine_select.py
                      "engine_measuring", "engine_measured", "engine_chosen"):  # worker/engine_select.py
            if kind in ("worker_failed", "worker_refused"):
                child.info["error"] = data.get("reason") or data.get("message") or data.get("error")
            self.emit(kind, {**data, "worker": child.name})
        elif kind == "broker_listening":
            self.emit(kind, {k: v for k, v in data.items() if v})
        else:
            log.debug("event %s from %s not relayed", kind, child.name)

    def _maybe_cluster_ready(self) -> None:
        """``model_loaded`` once a worker of every model is ready and the front sees them: from that line on,
        /health says ok. It names the default model (the seed's fields), and every model under ``models``."""
        if len(self.first_ready) == len(self.models) and self.front_url is not None and self.front_ready:
            info = self.first_ready[self.models[0].alias]
            data = {"model": info.get("model"), "dimensions": info.get("dimensions")}
            if len(self.models) > 1:
                data["models"] = [{"alias": spec.alias, "model": self.first_ready[spec.alias].get("model"),
                                   "kind": self.first_ready[spec.alias].get("kind", "embed"),
                                   "dimensions": self.first_ready[spec.alias].get("dimensions")}
                                  for spec in self.models]
            self.emit_once("model_loaded", "model_loaded", data)

    # -- children ---------------------------------------------------------------------------------------
    def start(self, child: Child) -> None:
        child.proc = subprocess.Popen(child.argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                      text=True, encoding="utf-8", errors="replace", bufsize=1,
                                      env=child_env(child.kind))
        child.started_at = time.monotonic()
        child.starts += 1
        child.restart_at = None
        child.info = {}
        threading.Thread(target=self._read, args=(child, child.proc), name=f"read-{child.name}",
                         daemon=True).start()
        if child.kind == "worker":
            data = {"worker": child.name, "pid": child.proc.pid, "device": child.device}
            if child.starts > 1:
                self.emit("worker_restarted", {**data, "restarts": child.starts - 1})
            else:
                self.emit("worker_started", data)
        else:
            log.info("started %s (pid %d)", child.name, child.proc.pid)

    def _read(self, child: Child, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:  # line by line: a line split over two reads is joined by the reader
            event = progress.parse_line(line.rstrip("\n"))
            if event is None:
                log.debug("%s printed a non-event line: %r", child.name, line[:200])
                continue
            self.events.put((child, event))

    def check_children(self) -> None:
        now = time.monotonic()
        for child in self.children:
            proc = child.proc
            if proc is not None and proc.poll() is not None:
                self.on_exit(child, proc.returncode, now)
            if child.proc is None and child.restart_at is not None and now >= child.restart_at:
                self.start(child)

    def on_exit(self, child: Child, code: int, now: float) -> None:
        pid = child.proc.pid if child.proc else 0
        child.proc = None
        if self.startup_failure is not None:  # stopping already: the event said why; no restart
            child.info["exit_code"] = code
            return
        ran = now - child.started_at
        child.failures = 0 if ran >= HEALTHY_AFTER else child.failures + 1
        delay = min(BACKOFF_FIRST * 2 ** max(0, child.failures - 1), BACKOFF_MAX)
        if child.kind == "worker":
            refused = code == ExitCode.REFUSED  # restarting will not help: it stays down
            self.emit("worker_exited", {"worker": child.name, "pid": pid, "code": code,
                                        "restart_in": None if refused else delay})
            self.broker_link.worker_gone(pid)
            if refused:
                child.failed = True
                self.emit("worker_failed", {"worker": child.name, "reason": "refused by the broker"})
            elif child.failures >= FAILED_AFTER and not child.failed:
                child.failed = True
                self.emit("worker_failed", {"worker": child.name, "reason": "crash loop",
                                            "failures": child.failures, "retry_in": delay})
            elif child.failures < FAILED_AFTER:
                child.failed = False
            child.down = down_report(child, pid, code, None if refused else delay)
            if refused:
                return
        else:
            log.error("%s exited with code %s after %.1fs; restarting in %.0fs", child.name, code, ran, delay)
        child.restart_at = now + delay

    # -- the loop ---------------------------------------------------------------------------------------
    def request_exit(self, signum: int = 0, frame: object = None) -> None:
        self.should_exit.set()

    def fail_startup(self, data: dict[str, Any]) -> None:
        """The shared start-up contract (docs/reliability.md): one ``startup_failed`` event, one log line,
        then everything stops and ``up`` exits 1."""
        if self.startup_failure is not None:
            return
        self.startup_failure = data
        self.emit("startup_failed", data)
        log.error("cannot start: %s (%s)", data.get("reason"), data.get("code"))
        self.should_exit.set()

    def preflight(self) -> bool:
        """The checks that fail fast, before anything is started (supervisor/doctor.py's ``startup_checks``,
        without the network); False after reporting the first that fails."""
        from supervisor.doctor import STARTUP_PARTS, startup_checks

        s = self.settings
        found = list(dict.fromkeys([*detect_devices(), "cpu"])) if s.device not in ("auto", "cpu") else ["cpu"]
        models = [spec.model for spec in self.models]
        for check in startup_checks(s.host, s.port, models, s.device, s.keys if s.lan else None, found,
                                    confirm_with_torch=gpu_driver_present()):
            if not check.ok:
                self.fail_startup({"code": check.code, "reason": check.message, "part": STARTUP_PARTS[check.name]})
                return False
        return True

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.request_exit)
        signal.signal(signal.SIGINT, self.request_exit)
        try:
            if not self.preflight():
                return ExitCode.FAILED
            self.plan()
            for child in self.children:
                self.start(child)
            while not self.should_exit.is_set():
                self.drain_events(timeout=0.2)
                if self.should_exit.is_set():  # a part that exits now is stopping with us: no restart
                    break
                self.check_children()
                self.broker_link.workers_down([c.down for c in self.children if c.down])
            self.emit("shutdown_started", {})
            self.shutdown(quick=self.startup_failure is not None)
            self.drain_events(timeout=0)
            self.emit("shutdown_complete", {})
            return ExitCode.FAILED if self.startup_failure is not None else ExitCode.OK
        finally:
            for child in self.children:  # nothing may outlive us, whatever happened above
                if child.proc is not None and child.proc.poll() is None:
                    child.proc.kill()
            self.broker_link.close()
            self.context.term()
            shutil.rmtree(self.rundir, ignore_errors=True)

    def drain_events(self, timeout: float) -> None:
        try:
            child, event = self.events.get(timeout=timeout) if timeout else self.events.get_nowait()
        except queue.Empty:
            return
        while True:
            if event is not None:
                self.on_event(child, event)
            try:
                child, event = self.events.get_nowait()
            except queue.Empty:
                return

    def shutdown(self, quick: bool = False) -> None:
        """The front first (it drains requests in flight), then the workers, then the broker. ``quick`` when
        start-up failed: nothing was served, so nothing is waited for long."""
        grace = 2.0 if quick else self.settings.shutdown_grace
        for kind, wait in (("front", grace + 5), ("worker", 3.0 if quick else WORKER_STOP_GRACE), ("broker", 5.0)):
            group = [c for c in self.children if c.kind == kind and c.proc is not None]
            for child in group:
                stop_child(child, wait)
            for child in group:
                log.info("%s stopped with exit code %s", child.name, child.info.get("exit_code"))
                if child.kind == "worker" and child.info.get("exit_code") is not None:
                    self.emit("worker_exited", {"worker": child.name, "code": child.info["exit_code"]})


def down_report(child: Child, pid: int, code: int, restart_in: float | None) -> dict[str, Any]:
    """How /health shows a worker whose process exited, until it serves again."""
    if code == ExitCode.REFUSED:
        reason = "refused by the broker"
    elif child.failed:
        reason = f"crash loop: {child.failures} quick exits in a row"
    else:
        reason = f"exited with code {code}"
    if child.info.get("error"):
        reason += f" ({child.info['error']})"
    return {"id": child.name, "model": child.model, "state": "failed" if child.failed else "restarting",
            "device": child.device,
            "pid": pid, "exit_code": code, "reason": reason, "failures": child.failures,
            "restarts": child.starts - 1, "restart_in": restart_in, "since": round(time.time(), 3)}


def stop_child(child: Child, grace: float) -> None:
    """SIGTERM, wait up to ``grace`` seconds, SIGKILL, reap, and record the exit code."""
    proc = child.proc
    if proc is None:
        return
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop within %.0fs: killing it", child.name, grace)
            proc.kill()
            proc.wait()
    child.info["exit_code"] = proc.returncode
    child.proc = None
