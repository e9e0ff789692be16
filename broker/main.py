"""Entry point of the broker process."""

from __future__ import annotations

import contextlib
import logging
import os
import signal

from broker.broker import Broker, BrokerSettings
from embed_common import lifeline, progress
from embed_common.exits import ExitCode

log = logging.getLogger(__name__)


def run(settings: BrokerSettings, parent_pid: int = 0) -> int:
    lifeline.watch_parent(parent_pid)
    broker = Broker(settings)
    broker.bind()
    for address in (settings.client_address, settings.worker_address):
        if address.startswith("tcp://"):  # a plain socket: no authentication on it (docs/security.md)
            log.warning("the broker listens on %s: whoever can reach it (every user of this machine, at least) may "
                        "connect without a key, as a front or as a worker that is given texts; up uses ipc:// "
                        "sockets in a directory of its own", address)

    def stop(signum: int, frame: object) -> None:
        lifeline.ignore_further_signals()
        broker.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    progress.emit("broker_listening", {"clients": settings.client_address, "workers": settings.worker_address,
                                       "lan": settings.lan_address})
    try:
        broker.run()
    finally:
        broker.close()
        remove_ipc_files(settings, rundir_too=lifeline.orphaned(parent_pid))
    return ExitCode.OK


def remove_ipc_files(settings: BrokerSettings, rundir_too: bool) -> None:
    """Unlink the ipc:// socket files this broker bound; with ``rundir_too`` (the supervisor was killed and
    will not clean up) also the directory that held them, if nothing else is left in it."""
    for address in (settings.client_address, settings.worker_address):
        if not address.startswith("ipc://"):
            continue
        path = address[len("ipc://"):]
        with contextlib.suppress(OSError):
            os.unlink(path)
        if rundir_too:
            with contextlib.suppress(OSError):
                os.rmdir(os.path.dirname(path))
