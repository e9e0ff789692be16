"""The servers the benchmark starts and stops: ``embed-cluster up`` and the seed-design server, plus the
resident memory of each of their processes (from /proc, Linux only)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent


class ServerError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMBED_")}
    env.update({"HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"})
    return env


class Server:
    """A child process whose stdout lines are collected; its stderr goes to ``log_path``."""

    def __init__(self, argv: list[str], log_path: Path, env: dict[str, str] | None = None, root: Path = ROOT) -> None:
        self.log_path = log_path
        self._log: IO[str] = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(argv, cwd=root, env=env or child_env(), stdout=subprocess.PIPE, stderr=self._log,
                                     stdin=subprocess.DEVNULL, text=True, bufsize=1)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.port = 0

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_line(self, match: Callable[[str], bool], what: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines:
                if match(line):
                    return line
            if self.proc.poll() is not None:
                raise ServerError(f"exited ({self.proc.returncode}) before {what}; see {self.log_path}")
            time.sleep(0.1)
        raise ServerError(f"no {what} within {timeout:.0f}s; see {self.log_path}")

    def stop(self, timeout: float = 60.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(timeout=5)
        self._log.close()


def progress_type(line: str) -> str | None:
    if not line.startswith("PROGRESS:"):
        return None
    return json.loads(line[len("PROGRESS:"):]).get("type")


def start_cluster(model: str, args: list[str], log_dir: Path, timeout: float = 600.0, root: Path = ROOT) -> Server:
    """``up`` on a free port; without the vector cache unless ``args`` names one (a bench that repeats its
    texts measures the model, not the cache; bench/cache.py measures the cache). ``root``: the checkout whose
    code every process of the tree runs (bench/ab.py starts an earlier revision's)."""
    port = free_port()
    cache = [] if "--cache" in args else ["--cache", "off"]
    argv = [sys.executable, "-m", "supervisor.cli", "up", "--port", str(port), "--model", model, *cache, *args]
    env = {**child_env(), "PYTHONPATH": str(root)} if root != ROOT else None
    server = Server(argv, log_dir / "cluster.log", env, root)
    server.port = port
    try:
        server.wait_line(lambda line: progress_type(line) == "model_loaded", "model_loaded event", timeout)
        wait_healthy(port, timeout=60, server=server)
    except BaseException:
        server.stop()
        raise
    return server


def start_seed_server(model: str, log_dir: Path, timeout: float = 600.0) -> Server:
    server = Server([sys.executable, str(ROOT / "bench" / "seed_server.py"), "--model", model],
                    log_dir / "seed_server.log")
    try:
        line = server.wait_line(lambda line: line.startswith("LISTENING "), "LISTENING line", timeout)
        server.port = int(line.split()[1])
    except BaseException:
        server.stop()
        raise
    return server


def wait_healthy(port: int, timeout: float, server: Server | None = None, interval: float = 0.2) -> dict[str, Any]:
    """Poll ``/health`` every ``interval`` seconds until it answers 200, and return its body; a ``server``
    that exits meanwhile fails at once rather than at the timeout."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                return json.loads(r.read())
        except OSError as exc:
            last = exc
        if server is not None and server.proc.poll() is not None:
            raise ServerError(f"exited ({server.proc.returncode}) before /health said 200; see {server.log_path}")
        time.sleep(interval)
    raise ServerError(f"/health not 200 within {timeout:.0f}s: {last}")


def get_json(port: int, path: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as r:
        return json.loads(r.read())


# -- resident memory ------------------------------------------------------------------------------------
def _status_kb(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status", encoding="utf-8") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _children(pid: int) -> list[int]:
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="utf-8") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == pid:
                kids.append(int(entry))
    return kids


def _role(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        argv = f.read().decode(errors="replace").split("\0")
    for role in ("broker", "front", "worker"):
        if role in argv:
            name = argv[argv.index("--worker-id") + 1] if "--worker-id" in argv else role
            return name if role == "worker" else role
    return "seed server" if any(a.endswith("seed_server.py") for a in argv) else "supervisor"


def _pss_kb(pid: int) -> int:
    """Proportional set size: shared pages (torch's libraries in two workers) counted once across processes."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="utf-8") as f:
            return next((int(line.split()[1]) for line in f if line.startswith("Pss:")), 0)
    except OSError:
        return 0


def cpu_seconds(pid: int) -> float:
    """CPU seconds ``pid`` has used (user + system, from /proc/PID/stat)."""
    with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def machine_busy_seconds() -> float:
    """CPU seconds every process on the machine has used since boot (all cores; /proc/stat's first line)."""
    with open("/proc/stat", encoding="utf-8") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")  # without guest time, counted in user already


def usage(root_pid: int) -> dict[str, dict[str, float]]:
    """{role: {"rss_mb", "peak_mb", "pss_mb", "cpu_s"}} for a process and its children."""
    out: dict[str, dict[str, float]] = {}
    for pid in [root_pid, *_children(root_pid)]:
        try:
            out[_role(pid)] = {"rss_mb": _status_kb(pid, "VmRSS") / 1024, "peak_mb": _status_kb(pid, "VmHWM") / 1024,
                               "pss_mb": _pss_kb(pid) / 1024, "cpu_s": cpu_seconds(pid)}
        except OSError:
            continue
    return out
