"""A histogram of the batch sizes a worker encodes, small enough to ride in every heartbeat's stats.

The worker counts each batch into power-of-two buckets; the broker forwards the snapshot in its status and the
front turns it into a Prometheus histogram (http_front/observability.py).
"""

from __future__ import annotations

import threading
from typing import Any

BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)  # upper bounds in texts; one more bucket is +Inf


class BatchSizes:
    def __init__(self, buckets: tuple[int, ...] = BUCKETS) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)  # per bucket, not cumulative; the last is over the top bound
        self.total = 0
        self._lock = threading.Lock()

    def observe(self, size: int) -> None:
        index = next((i for i, bound in enumerate(self.buckets) if size <= bound), len(self.buckets))
        with self._lock:
            self.counts[index] += 1
            self.total += size

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {"le": list(self.buckets), "counts": list(self.counts), "sum": self.total}
