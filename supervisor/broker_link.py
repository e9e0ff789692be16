"""What the supervisor tells the broker about its local worker processes, on the broker's client socket.

- ``WORKER_GONE {pid, host}`` the moment a worker process exits, so that the broker requeues its jobs at once
  instead of waiting for its heartbeats to stop;
- ``WORKERS_DOWN {workers}``: the workers that do not serve now (exited and waiting to restart, or failed in a
  crash loop), which the broker puts in its status and the front in ``/health``. It is the whole list each
  time: sent when it changes, and again every ``resend`` seconds while it is not empty, so that a restarted
  broker (which knows nothing) or a message lost with a dying broker is made good within seconds.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from collections.abc import Callable
from typing import Any

import zmq

from embed_common import protocol, sockets
from embed_common.protocol import Command

log = logging.getLogger(__name__)

RESEND_INTERVAL = 2.0


class BrokerLink:
    """``clock``: monotonic seconds, when a report is due again (a test passes one it moves by hand)."""

    def __init__(self, context: zmq.Context, address: str, resend: float = RESEND_INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.context = context
        self.address = address
        self.resend = resend
        self.clock = clock
        self.host = socket.gethostname()  # what a local worker reports as its host
        self._sock: zmq.Socket | None = None
        self._sent: list[dict[str, Any]] = []  # a broker starts with an empty list
        self._sent_at = 0.0

    def worker_gone(self, pid: int) -> None:
        self._send(Command.WORKER_GONE, {"pid": pid, "host": self.host})

    def workers_down(self, workers: list[dict[str, Any]]) -> None:
        """Report ``workers`` (the whole list) if it changed, or if it is not empty and was sent a while ago."""
        now = self.clock()
        if workers == self._sent and (not workers or now - self._sent_at < self.resend):
            return
        self._send(Command.WORKERS_DOWN, {"workers": workers})
        self._sent, self._sent_at = workers, now

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None

    def _send(self, command: Command, header: dict[str, Any]) -> None:
        if self._sock is None:
            sock = sockets.configure(self.context.socket(zmq.DEALER))
            sock.setsockopt(zmq.SNDHWM, 100)
            sock.connect(self.address)
            self._sock = sock
        with contextlib.suppress(zmq.Again):  # the broker is down: the next report makes good
            self._sock.send_multipart(protocol.encode(command, header), zmq.NOBLOCK)
