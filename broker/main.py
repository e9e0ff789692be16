"""Entry point of the broker process."""

from __future__ import annotations

import logging
import signal

from broker.broker import Broker, BrokerSettings
from supervisor import lifeline, progress

log = logging.getLogger(__name__)


def run(settings: BrokerSettings, parent_pid: int = 0) -> int:
    lifeline.watch_parent(parent_pid)
    broker = Broker(settings)
    broker.bind()

    def stop(signum: int, frame: object) -> None:
        broker.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    progress.emit("broker_listening", {"clients": settings.client_address, "workers": settings.worker_address,
                                       "lan": settings.lan_address})
    try:
        broker.run()
    finally:
        broker.close()
    return 0
