"""An in-process cluster for unit tests: a real Broker on ``inproc://`` sockets in a thread, real WorkerLoops
driving FakeEmbedders, a real BrokerClient as the front, and raw peers that speak the protocol by hand
(to send what a well-behaved part never would)."""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import falcon.testing
import numpy as np
import pytest
import zmq

from broker.broker import Broker, BrokerSettings
from embed_common import protocol
from embed_common.protocol import Command, Message
from embed_common.settings import Limits
from http_front.broker_client import BrokerClient
from tests.conftest import eventually as poll
from worker.embedder import FakeEmbedder, normalize_rows
from worker.worker import WorkerLoop, WorkerSettings

# Fast heartbeats keep the tests short: the broker's and the workers' loops wake, and so stop, at the next one.
# A silent worker is presumed dead after interval * liveness = 0.5 s.
FAST = {"heartbeat_interval": 0.02, "heartbeat_liveness": 25}
# for a test that waits for a silent worker to be presumed dead: after 0.3 s (still 15 heartbeats missed)
SILENCE_KILLS_SOONER = {"heartbeat_liveness": 15}
STATUS_INTERVAL = 0.02  # the front asks for the broker's status this often: a wait on it is this short
GONE_CHECK = 0.02  # a waiting request looks this often whether its client has gone (the front's: 0.25 s)
# the app's limits in front of an in-process cluster: small, so that tests reach them cheaply
LIMITS = Limits(max_body_bytes=4096, max_texts=50, max_text_chars=500, request_timeout=30.0)
DEADLINE = 15.0  # generous: the machine may be busy; waits fail loudly when it passes


def fake_vectors(texts: list[str], normalize: bool = True, **embedder: Any) -> np.ndarray:
    """What a FakeEmbedder worker must answer for ``texts``, computed without any cluster."""
    fake = FakeEmbedder(**embedder)
    raw = fake.encode_ids(fake.tokenize(texts).ids)
    return normalize_rows(raw) if normalize else raw


def eventually(check: Callable[[], Any], what: str, timeout: float = DEADLINE) -> Any:
    """tests.conftest.eventually with the unit tier's deadline and a faster poll."""
    return poll(check, what, timeout, interval=0.01)

class CrashingWorkerLoop(WorkerLoop):
    """A worker loop that can die the way a killed process does: no DISCONNECT, no replies, just silence."""

    crashed = False

    def crash(self) -> None:
        self.crashed = True
        self.stop()

    def send(self, command: Command, header: dict[str, Any], *payload: bytes) -> None:
        if not self.crashed:
            super().send(command, header, *payload)


@dataclass
class RunningWorker:
    """A WorkerLoop serving on its own thread, as ``worker/main.py`` runs it in a process."""

    loop: WorkerLoop
    embedder: FakeEmbedder
    events: list[tuple[str, dict[str, Any]]]
    exit_code: int | None = None
    thread: threading.Thread = field(init=False)

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._run, name=f"worker-{self.loop.worker_id}", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.exit_code = self.loop.run()


class RawPeer:
    """A DEALER socket that speaks the protocol by hand, owned by the test's thread."""

    def __init__(self, context: zmq.Context, address: str) -> None:
        self.sock = context.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(address)

    def send(self, command: Command, header: dict[str, Any], *payload: bytes) -> None:
        self.sock.send_multipart(protocol.encode(command, header, *payload))

    def send_raw(self, frames: list[bytes]) -> None:
        self.sock.send_multipart(frames)

    def recv(self, timeout: float = DEADLINE, skip: tuple[Command, ...] = (Command.HEARTBEAT,)) -> Message:
        """The next message that is not in ``skip``; fails loudly when none comes in time."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self.sock.poll(int(remaining * 1000)):
                pytest.fail(f"no message within {timeout}s")
            message = protocol.decode(self.sock.recv_multipart())
            if message.command not in skip:
                return message

    def recv_nothing(self, seconds: float, skip: tuple[Command, ...] = (Command.HEARTBEAT,)) -> None:
        """Assert that nothing but ``skip`` arrives for ``seconds``."""
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            if self.sock.poll(int(remaining * 1000) + 1):
                message = protocol.decode(self.sock.recv_multipart())
                assert message.command in skip, f"unexpected {message.command.name}: {message.header}"

    def close(self) -> None:
        self.sock.close(linger=0)


class InprocCluster:
    def __init__(self, **settings: Any) -> None:
        self.context = zmq.Context()
        tag = uuid.uuid4().hex[:8]
        self.settings = BrokerSettings(client_address=f"inproc://clients-{tag}",
                                       worker_address=f"inproc://workers-{tag}", **{**FAST, **settings})
        self.broker = Broker(self.settings, self.context)
        self.broker.bind()  # here, before anything connects; the broker's thread owns the sockets from now on
        self._broker_thread = threading.Thread(target=self.broker.run, name="broker", daemon=True)
        self._broker_thread.start()
        self.client = BrokerClient(self.settings.client_address, self.context, status_interval=STATUS_INTERVAL,
                                   start_interval=STATUS_INTERVAL / 2, gone_check=GONE_CHECK)
        self.client.start()
        self.workers: list[RunningWorker] = []
        self.peers: list[RawPeer] = []

    def add_worker(self, embedder: FakeEmbedder | None = None, *, capacity: int = 64,
                   loop_class: type[WorkerLoop] = WorkerLoop, wait: bool = True) -> RunningWorker:
        embedder = embedder or FakeEmbedder()
        worker_id = f"w{len(self.workers)}"
        settings = WorkerSettings(broker=self.settings.worker_address, worker_id=worker_id, capacity=capacity,
                                  reconnect_max=1.0)
        events: list[tuple[str, dict[str, Any]]] = []
        loop = loop_class(settings, embedder, {"model_name": embedder.model_id.rsplit("/", 1)[-1]},
                          context=self.context, on_event=lambda kind, data: events.append((kind, data)))
        running = RunningWorker(loop, embedder, events)
        self.workers.append(running)
        if wait:
            self.wait_status(lambda s: worker_id in {w["id"] for w in s["workers"]}, f"{worker_id} registered")
        return running

    def peer(self, which: str) -> RawPeer:
        """A raw peer on the broker's ``client`` or ``worker`` socket."""
        address = self.settings.client_address if which == "client" else self.settings.worker_address
        peer = RawPeer(self.context, address)
        self.peers.append(peer)
        return peer

    def wait_status(self, check: Callable[[dict[str, Any]], Any], what: str) -> dict[str, Any]:
        """The broker's status (as the front sees it) once ``check`` holds for it."""
        def latest() -> dict[str, Any] | None:
            status = self.client.broker_status()
            return dataclasses.asdict(status) if status is not None else None

        def fresh() -> dict[str, Any] | None:
            status = latest()
            return status if status is not None and check(status) else None

        return eventually(fresh, f"{what}; last status: {latest()}")

    def close(self) -> None:
        for running in self.workers:
            running.loop.stop()
        for running in self.workers:
            running.thread.join(timeout=DEADLINE)
        for peer in self.peers:
            peer.close()
        self.client.close()
        self.broker.stop()
        self._broker_thread.join(timeout=DEADLINE)
        stuck = [t.name for t in (self._broker_thread, *(w.thread for w in self.workers)) if t.is_alive()]
        assert not stuck, f"threads did not stop: {stuck}"
        self.broker.close()
        self.context.term()


class Served(NamedTuple):
    """The ``served`` fixture (tests/unit/conftest.py): the app through falcon.testing, and its cluster."""

    client: falcon.testing.TestClient
    cluster: InprocCluster
