"""Cross-request batching: the texts of every job a worker holds, grouped into batches by predicted cost.

A batch is padded to its longest text, so its compute is ``size * width`` tokens (dearer per token as the
width grows: attention is quadratic), plus a fixed cost per forward pass (weights streamed through the
caches, Python dispatch, kernel launches). :class:`CostModel` predicts that time; :func:`plan_batches`
sorts texts by length and cuts them into the batches of least total predicted cost (an exact dynamic
programme over the sorted order), within a token budget (a memory bound) and a batch-size cap. So a large
job is split, many small jobs are merged, and a long text is never padded into a batch of short ones unless
a whole extra forward pass would cost more.

:class:`Pool` holds the jobs in progress. After each batch it plans again over what is left plus what has
arrived meanwhile (continuous batching: a new request joins the next batch, it does not wait for a window to
drain), and hands out the batch that holds a text of the oldest job (so every job progresses; no
starvation), preferring the cheapest such batch, or, when that job is all it holds, the costliest (so that
the compute threads end the job together). A job is finished when its last text is encoded.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from embed_common.protocol import DEFAULT_OPTIONS, JobOptions


@dataclass(frozen=True)
class CostModel:
    """Predicted time of one padded batch of ``size`` texts of ``width`` tokens, in units of one token's time:
    ``overhead + size * width * (1 + width / attention_width)``."""

    overhead: float  # a forward pass's fixed cost, in tokens
    attention_width: float  # the width at which attention doubles a token's cost

    def cost(self, size: int, width: int) -> float:
        return self.overhead + size * width * (1.0 + width / self.attention_width)


# Fitted by bench/calibrate.py (least squares over 1-64 texts x 8-256 tokens) for all-MiniLM-L6-v2 with one
# torch thread on the project's 2-core machine: `python bench/calibrate.py --precision fp32` and
# `--precision fp16w` print the fits (fp16w's packed weights make a pass's fixed cost a smaller share).
CPU_COST = CostModel(overhead=31.0, attention_width=1040.0)
CPU_FP16W_COST = CostModel(overhead=16.1, attention_width=1382.0)
# ONNX Runtime fp32 (worker/onnx_backend.py, one intra-op thread), the same model and machine (busy that day):
# `python bench/calibrate.py --backend onnx`. A pass's fixed cost is a smaller share than torch's, attention a
# larger one.
CPU_ONNX_COST = CostModel(overhead=8.4, attention_width=500.0)
# Accelerators run a batch's tokens in parallel: a pass costs as much as a few thousand tokens, and padding
# is cheap. An estimate, not a measurement of this project: bench/calibrate.py --device cuda refits it.
ACCELERATOR_COST = CostModel(overhead=4096.0, attention_width=2048.0)


def default_cost_model(device: str, precision: str = "fp32", backend: str = "torch") -> CostModel:
    if device != "cpu":
        return ACCELERATOR_COST
    if backend == "onnx":
        return CPU_ONNX_COST
    return CPU_FP16W_COST if precision == "fp16w" else CPU_COST


@dataclass
class PendingJob:
    job_id: str
    attempt: int
    normalize: bool
    ids: list[list[int]]
    truncated: list[int]
    dim: int
    options: JobOptions = DEFAULT_OPTIONS
    chunks: list[list[int]] | None = None  # for a chunked job: [text index, start, end] of each row
    counts: list[int] | None = None  # for a tokenize job: each text's tokens, none cut (it encodes nothing)
    vectors: np.ndarray = field(init=False)
    remaining: int = field(init=False)
    encode_seconds: float = 0.0
    failed: bool = False
    generation: int = 0  # the worker's registration it came in under

    def __post_init__(self) -> None:
        self.vectors = np.empty((len(self.ids), self.dim), dtype=np.float32)
        self.remaining = len(self.ids)

    @property
    def tokens(self) -> int:
        return sum(len(seq) for seq in self.ids)


Item = tuple[int, int]  # (index of the job in the window, index of the text in that job)


def plan_batches(window: list[PendingJob], token_budget: int, max_batch: int,
                 cost: CostModel = CPU_COST) -> list[list[Item]]:
    """Every text of ``window`` in batches of least total predicted cost, cheapest batch first."""
    items = [(j, t) for j, job in enumerate(window) for t in range(len(job.ids))]
    lengths = [len(window[j].ids[t]) for j, t in items]
    return [[items[i] for i in group] for _, group in plan_groups(lengths, token_budget, max_batch, cost)]


def plan_groups(lengths: list[int], token_budget: int, max_batch: int,
                cost: CostModel) -> list[tuple[float, list[int]]]:
    """Indices of ``lengths`` grouped into batches of least total predicted cost, as (cost, indices), cheapest
    first. A batch holds at most ``max_batch`` texts and ``size * width <= token_budget`` padded tokens (a
    text longer than the budget goes alone)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    widths = [max(1, lengths[i]) for i in order]
    groups = [(cost.cost(end - start, widths[start]), order[start:end])
              for start, end in optimal_cuts(widths, token_budget, max_batch, cost)]
    groups.sort(key=lambda group: group[0])
    return groups


def optimal_cuts(lengths: list[int], token_budget: int, max_batch: int, cost: CostModel) -> list[tuple[int, int]]:
    """[start, end) groups of ``lengths`` (sorted longest first) of least total cost, each within the limits.

    ``best[i]`` is the least cost of the first ``i`` texts; the last group of those ends at ``i`` and starts at
    some ``j``, where ``lengths[j]`` is its width. For each ``i`` every feasible ``j`` is tried at once.
    """
    n = len(lengths)
    if n == 0:
        return []
    width = np.asarray(lengths, dtype=np.float64)
    per_text = width * (1.0 + width / cost.attention_width)  # a text's cost at the width of a group it starts
    best = np.zeros(n + 1)
    start_of = np.zeros(n + 1, dtype=np.int64)
    for i in range(1, n + 1):
        j = np.arange(max(0, i - max_batch), i)
        size = i - j
        total = best[j] + cost.overhead + size * per_text[j]
        too_big = (size * width[j] > token_budget) & (size > 1)
        total[too_big] = np.inf
        k = int(np.argmin(total))
        best[i] = total[k]
        start_of[i] = j[k]
    groups = []
    end = n
    while end > 0:
        start = int(start_of[end])
        groups.append((start, end))
        end = start
    groups.reverse()
    return groups


def share_of(group: list[int], lengths: list[int], parts: int) -> list[int]:
    """The first of ``parts`` about equal pieces of ``group`` by tokens (at least one text, one left over)."""
    parts = min(parts, len(group))
    total = sum(max(1, lengths[i]) for i in group)
    taken, tokens = [], 0
    for i in group:
        taken.append(i)
        tokens += max(1, lengths[i])
        if tokens * parts >= total or len(taken) == len(group) - 1:
            break
    return taken


class Pool:
    """The jobs a worker holds, planned again into batches after every batch it encodes."""

    def __init__(self, token_budget: int, max_batch: int, cost: CostModel = CPU_COST, horizon: int = 1024) -> None:
        self.token_budget = token_budget
        self.max_batch = max_batch
        self.cost = cost
        self.horizon = horizon  # texts planned at once, oldest first: bounds the planning time of a huge job
        self._order = itertools.count()
        self.jobs: dict[int, PendingJob] = {}  # arrival number -> job, oldest first
        self.todo: dict[int, list[int]] = {}  # arrival number -> its texts not yet handed out

    def has_work(self) -> bool:
        return any(self.todo.values())

    def add(self, job: PendingJob) -> None:
        key = next(self._order)
        self.jobs[key] = job
        self.todo[key] = list(range(len(job.ids)))

    def next_batch(self, parts: int = 1) -> list[tuple[PendingJob, int]]:
        """The cheapest planned batch that holds a text of the oldest job with texts left; [] when none. When
        that job is all the pool holds, its costliest batch instead: then the order only decides how evenly the
        compute threads finish (longest first, so that the batch left for last is the smallest and no thread
        waits long for another to end the job), while with other jobs waiting a cheap batch first also serves
        their texts that share it sooner (a query beside a bulk load).

        ``parts`` is how many compute threads could take work now (this one and the idle ones): while the plan
        holds fewer batches than that, the batch is cut to its share (:func:`share_of`), so that the idle
        threads get the rest rather than waiting while one thread encodes it all.
        """
        refs = list(itertools.islice(((key, t) for key, texts in self.todo.items() for t in texts), self.horizon))
        if not refs:
            return []
        oldest = refs[0][0]
        lengths = [len(self.jobs[key].ids[t]) for key, t in refs]
        groups = plan_groups(lengths, self.token_budget, self.max_batch, self.cost)
        if all(key == oldest for key, texts in self.todo.items() if texts):  # past the horizon too
            group = groups[-1][1]  # every batch is the oldest job's: its costliest
        else:
            group = next(g for _, g in groups if any(refs[i][0] == oldest for i in g))
        if parts > len(groups) and len(group) > 1:
            group = share_of(group, lengths, parts - len(groups) + 1)
        batch = [refs[i] for i in group]
        for key in {key for key, _ in batch}:
            taken = {t for k, t in batch if k == key}
            self.todo[key] = [t for t in self.todo[key] if t not in taken]
        return [(self.jobs[key], t) for key, t in batch]

    def drop(self, which: Callable[[PendingJob], bool]) -> None:
        """Forget the jobs ``which`` picks: finished, failed, or taken under a registration now gone."""
        for key in [key for key, job in self.jobs.items() if which(job)]:
            del self.jobs[key]
            del self.todo[key]
