"""Start-up faults and stopping, through real ``embed-cluster up`` processes (issue 12's cases 4-6): a port
that cannot be bound, a model path that does not exist, a device that is not there and a broken key
directory each end ``up`` within seconds with one ``startup_failed`` event, one log line, no traceback, exit
1 and nothing left running; /health says ok from the moment ``model_loaded`` is printed; SIGTERM under load
ends every part with exit code 0."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from supervisor.supervisor import detect_devices
from tests.conftest import Cluster, Process, cli, eventually, free_port
from tests.integration.faults import Load, TextPool, alive, busy_worker, check_outcomes, children_of

pytestmark = pytest.mark.slow

FAIL_WITHIN = 10.0  # seconds from start to exit for a start-up fault ("within seconds", on a busy machine)


def processes_of(parent_pid: int) -> list[int]:
    """Live processes started by ``parent_pid`` (every child carries ``--parent-pid``), re-parented or not."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        ours = b"--parent-pid" in argv and argv[argv.index(b"--parent-pid") + 1:][:1] == [str(parent_pid).encode()]
        if ours and alive(int(entry)):
            found.append(int(entry))
    return found


def expect_startup_failure(process: Process, code: str, part: str, within: float = FAIL_WITHIN) -> dict[str, Any]:
    started = time.monotonic()
    try:
        exit_code = process.proc.wait(timeout=within)
    except Exception:
        process.stop(signal.SIGKILL)
        pytest.fail(f"still running after {within}s: events {process.events}\n{process.log()}")
    took = time.monotonic() - started
    stderr = process.log(tail=10**6)
    process.stop()
    failures = [e for e in process.events if e["type"] == "startup_failed"]
    assert exit_code == 1, (exit_code, stderr)
    assert len(failures) == 1, process.events
    data = failures[0]["data"]
    assert data["code"] == code and data["part"] == part, data
    assert data["reason"] and "\n" not in data["reason"]
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1, stderr
    assert not any(e["type"] == "model_loaded" for e in process.events)
    assert not processes_of(process.proc.pid), "a part outlived the failed start"
    print(f"\n{code}: exit 1 after {took:.2f} s: {data['reason']}")
    return data


def test_a_port_in_use_fails_fast_with_port_in_use() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen(1)
        port = held.getsockname()[1]
        cluster = Cluster("--workers", "1", port=port)
        data = expect_startup_failure(cluster, "PORT_IN_USE", "front")
        assert str(port) in data["reason"]


def test_a_front_that_cannot_bind_reports_it_and_exits_1() -> None:
    """The front's own report, for when the port is taken between the supervisor's check and its bind."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen(1)
        port = held.getsockname()[1]
        front = Process(cli("front", "--broker", "ipc:///tmp/embed-test-no-broker.ipc", "--port", str(port)))
        expect_startup_failure(front, "PORT_IN_USE", "front")


def test_a_model_path_that_does_not_exist_fails_fast_with_model_unavailable(tmp_path: Path) -> None:
    cluster = Cluster("--workers", "1", "--model", str(tmp_path / "no-such-model"))
    expect_startup_failure(cluster, "MODEL_UNAVAILABLE", "worker")


@pytest.mark.skipif(any(d.startswith("cuda") for d in detect_devices()), reason="this machine has a GPU")
def test_a_device_that_is_not_there_fails_fast_with_device_unavailable() -> None:
    cluster = Cluster("--workers", "1", "--device", "cuda")
    # where NVIDIA's device nodes exist but no GPU was counted, torch's own probe decides: it imports torch
    expect_startup_failure(cluster, "DEVICE_UNAVAILABLE", "worker", within=FAIL_WITHIN + 10)


def test_a_broken_key_directory_fails_fast_with_keys_invalid(tmp_path: Path) -> None:
    (tmp_path / "broker.key_secret").write_text("not a key\n")
    cluster = Cluster("--workers", "1", "--lan", f"127.0.0.1:{free_port()}", "--keys", str(tmp_path))
    expect_startup_failure(cluster, "KEYS_INVALID", "broker")


def test_health_is_ok_at_model_loaded_and_every_part_exits_0_on_sigterm_under_load(pool: TextPool) -> None:
    """Three starts: /health the moment ``model_loaded`` is printed; then, while the workers encode, SIGTERM to
    the supervisor and, at once, to every part (what a process-group or cgroup kill does: a terminal's Ctrl-C,
    systemd, docker stop), so that each part also gets the supervisor's own SIGTERM later."""
    for start in range(3):
        cluster = Cluster("--workers", "2", "--threads", "1", "--precision", "fp32", "--shutdown-grace", "5")
        try:
            cluster.wait_event("model_loaded", timeout=180)
            r = requests.get(cluster.url + "/health", timeout=5)
            assert r.status_code == 200 and r.json()["status"] == "ok", (start, r.status_code, r.text)
            print(f"\nstart {start + 1}: /health {r.status_code} {r.json()['status']} right after model_loaded")
            parts = list(children_of(cluster.proc.pid))
            workers = [pid for pid, argv in children_of(cluster.proc.pid).items() if " worker " in argv]
            assert len(workers) == 2
            with Load(cluster.url, pool, clients=16, sizes=(16, 32, 66)) as load:
                load.wait_answers(8)
                busy_worker(cluster)
                cluster.proc.send_signal(signal.SIGTERM)
                for pid in parts:
                    os.kill(pid, signal.SIGTERM)
                code = cluster.proc.wait(timeout=90)
            assert code == 0, cluster.log()
            exits = [e["data"] for e in cluster.events if e["type"] == "worker_exited"]
            assert exits and all(e["code"] == 0 for e in exits), (exits, cluster.log())
            assert {e["worker"] for e in exits} == {"worker-0", "worker-1"}, exits
            eventually(lambda parts=parts: not any(alive(pid) for pid in parts), "every part gone after SIGTERM",
                       timeout=10)
            log = cluster.log(tail=10**7)
            assert "terminate called" not in log
            for part in ("front", "broker"):  # the workers' codes are in their worker_exited events
                assert f"{part} stopped with exit code 0" in log, log
        finally:
            cluster.stop()
        answered = [o for o in load.outcomes if not o.exception]
        assert all(o.exception == "ConnectionError" for o in load.outcomes if o.exception)
        tally = check_outcomes(answered, allowed={"SHUTTING_DOWN", "NO_WORKERS"}, min_ok=1)
        print(f"start {start + 1}: SIGTERM under load: worker exit codes {[e['code'] for e in exits]}, "
              f"front, broker and supervisor 0; requests {dict(tally)}, "
              f"{len(load.outcomes) - len(answered)} refused connections")


def test_a_cluster_whose_app_dies_by_sigkill_stops_itself(tmp_path: Path) -> None:
    """The desktop app spawns ``up --parent-pid <its pid>``; if the app is killed (it never sends SIGTERM), the
    cluster stops by itself: supervisor, front and broker all exit, nothing is left running."""
    pidfile = tmp_path / "up.pid"
    up_argv = cli("up", "--workers", "0", "--port", str(free_port()))
    # the stand-in app: starts the cluster with its own pid, writes the cluster's pid, then waits to be killed
    app = (f"import os, subprocess, time\n"
           f"p = subprocess.Popen({up_argv!r} + ['--parent-pid', str(os.getpid())], stdout=subprocess.DEVNULL)\n"
           f"open({str(pidfile)!r}, 'w').write(str(p.pid))\n"
           f"time.sleep(600)\n")
    parent = subprocess.Popen([sys.executable, "-c", app])
    try:
        up = int(eventually(lambda: pidfile.exists() and pidfile.read_text(), "the app started the cluster"))
        parts = list(eventually(lambda: len(children_of(up)) >= 2 and children_of(up), "front and broker started"))
        parent.kill()
        parent.wait()
        eventually(lambda: not any(alive(pid) for pid in [up, *parts]), "the cluster stopped after its app died",
                   timeout=20)
    finally:
        parent.kill()
