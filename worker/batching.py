"""Cross-request batching: many jobs' texts, sorted by length, cut into batches by a token budget.

The compute loop takes every job that is waiting (a window), plans batches over all their texts at once
(so a large job is split and small jobs are merged), encodes them, and finishes each job as soon as its last
text is done. A batch's cost is its padded size, ``len(batch) * longest``; that is what the budget bounds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class PendingJob:
    job_id: str
    attempt: int
    normalize: bool
    ids: list[list[int]]
    truncated: list[int]
    dim: int
    options: dict[str, Any] = field(default_factory=dict)
    chunks: list[list[int]] | None = None  # for a chunked job: [text index, start, end] of each row
    vectors: np.ndarray = field(init=False)
    remaining: int = field(init=False)
    encode_seconds: float = 0.0

    def __post_init__(self) -> None:
        self.vectors = np.empty((len(self.ids), self.dim), dtype=np.float32)
        self.remaining = len(self.ids)

    @property
    def tokens(self) -> int:
        return sum(len(seq) for seq in self.ids)


Item = tuple[int, int]  # (index of the job in the window, index of the text in that job)


def plan_batches(window: list[PendingJob], token_budget: int, max_batch: int) -> list[list[Item]]:
    """Group every text of ``window`` into batches of similar length, each within the token budget.

    Texts are sorted longest first, so each batch's first text fixes its padded width. Batches come out
    in the order of the window's jobs where lengths allow: the batch holding a job's last text is as early
    as sorting permits, because whole-window sorting is what buys the throughput.
    """
    items: list[tuple[int, Item]] = [
        (len(seq), (j, t)) for j, job in enumerate(window) for t, seq in enumerate(job.ids)
    ]
    items.sort(key=lambda item: -item[0])
    batches: list[list[Item]] = []
    current: list[Item] = []
    width = 0
    for length, item in items:
        if current and (len(current) + 1 > max_batch or (len(current) + 1) * width > token_budget):
            batches.append(current)
            current = []
        if not current:
            width = max(length, 1)
        current.append(item)
    if current:
        batches.append(current)
    # short batches first: they are cheap, and finish the small (latency-sensitive) jobs early
    batches.reverse()
    return batches
