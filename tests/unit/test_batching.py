"""Cross-request batching (worker/batching.py) and the compute thread that drives it, with the fake embedder."""

from __future__ import annotations

import itertools
import random
import socket
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from tests.conftest import eventually
from worker.batching import (
    CPU_COST,
    CostModel,
    PendingJob,
    Pool,
    optimal_cuts,
    plan_batches,
    plan_groups,
    share_of,
)
from worker.embedder import FakeEmbedder, normalize_rows
from worker.worker import ComputeThreads


def job(job_id: str, lengths: list[int], dim: int = 4) -> PendingJob:
    return PendingJob(job_id, 0, True, [[7] * n for n in lengths], [], dim)


def brute_force(lengths: list[int], budget: int, max_batch: int, cost: CostModel) -> float:
    """The least total cost over every way to cut the sorted lengths into contiguous feasible groups."""
    n, best = len(lengths), float("inf")
    for cuts in itertools.product([False, True], repeat=n - 1):
        bounds = [0, *[i + 1 for i, cut in enumerate(cuts) if cut], n]
        groups = list(itertools.pairwise(bounds))
        if all(e - s <= max_batch and (e - s == 1 or (e - s) * lengths[s] <= budget) for s, e in groups):
            best = min(best, sum(cost.cost(e - s, lengths[s]) for s, e in groups))
    return best


@pytest.mark.parametrize("seed", range(25))
def test_optimal_cuts_is_optimal_and_feasible(seed: int) -> None:
    rng = random.Random(seed)
    lengths = sorted((rng.choice([1, 3, 8, 15, 40, 90, 200, 256]) for _ in range(rng.randint(1, 9))), reverse=True)
    budget, max_batch = rng.choice([256, 600, 4096]), rng.choice([2, 4, 64])
    cost = CostModel(overhead=rng.choice([0.0, 31.0, 500.0]), attention_width=rng.choice([100.0, 1040.0]))
    groups = optimal_cuts(lengths, budget, max_batch, cost)
    assert [i for s, e in groups for i in range(s, e)] == list(range(len(lengths)))  # each text once, in order
    for s, e in groups:
        assert e - s <= max_batch and (e - s == 1 or (e - s) * lengths[s] <= budget)
    total = sum(cost.cost(e - s, lengths[s]) for s, e in groups)
    assert total == pytest.approx(brute_force(lengths, budget, max_batch, cost))


def test_every_text_is_planned_once_within_the_limits() -> None:
    rng = random.Random(3)
    window = [job(f"j{i}", [rng.randint(1, 300) for _ in range(rng.randint(1, 64))]) for i in range(12)]
    batches = plan_batches(window, token_budget=2048, max_batch=48)
    planned = [item for batch in batches for item in batch]
    assert sorted(planned) == sorted((j, t) for j, w in enumerate(window) for t in range(len(w.ids)))
    for batch in batches:
        width = max(len(window[j].ids[t]) for j, t in batch)
        assert len(batch) <= 48 and (len(batch) == 1 or len(batch) * width <= 2048)


def test_a_long_text_is_not_padded_together_with_short_ones() -> None:
    window = [job("long", [256]), *(job(f"q{i}", [10]) for i in range(20))]
    batches = plan_batches(window, token_budget=8192, max_batch=256, cost=CPU_COST)
    assert [0, 0] in [list(b[0]) for b in batches if len(b) == 1]  # the long text alone
    assert sorted(len(b) for b in batches) == [1, 20]  # the short ones from 20 requests in one batch


def test_a_large_job_is_split_by_the_token_budget_and_small_jobs_merged() -> None:
    big = job("big", [200] * 64)
    smalls = [job(f"s{i}", [12]) for i in range(30)]
    batches = plan_batches([big, *smalls], token_budget=4096, max_batch=256)
    big_batches = [b for b in batches if b[0][0] == 0]
    assert len(big_batches) >= 4 and all(len(b) * 200 <= 4096 for b in big_batches)
    assert any(len({j for j, _ in b}) == 30 for b in batches)  # the 30 small requests share one batch
    assert plan_batches([], 4096, 256) == []


def test_batches_come_cheapest_first() -> None:
    lengths = [256, 256, 5, 5, 5, 60, 60]
    costs = [c for c, _ in plan_groups(lengths, 4096, 256, CPU_COST)]
    assert costs == sorted(costs) and len(costs) == 3


def test_planning_beats_one_padded_batch_by_the_cost_model() -> None:
    rng = random.Random(9)
    lengths = [rng.choice([6, 12, 20, 48, 120, 256]) for _ in range(32)]
    planned = sum(c for c, _ in plan_groups(lengths, 8192, 256, CPU_COST))
    assert planned < CPU_COST.cost(32, max(lengths)) / 2


def test_pool_serves_the_oldest_job_first_and_merges_newcomers() -> None:
    pool = Pool(token_budget=4096, max_batch=256)
    old, new = job("old", [100, 100, 8]), job("new", [8, 8])
    pool.add(old)
    pool.add(new)
    first = pool.next_batch()
    assert any(j is old for j, _ in first)
    late = job("late", [100])
    pool.add(late)  # arrives while the first batch runs: planned with what is left
    handed = first + pool.next_batch()
    while pool.has_work():
        handed += pool.next_batch()
    assert sorted((j.job_id, t) for j, t in handed) == [("late", 0), ("new", 0), ("new", 1),
                                                         ("old", 0), ("old", 1), ("old", 2)]


def test_a_lone_job_hands_out_its_costliest_batch_first_and_its_cheapest_last() -> None:
    lengths = [256, 256, 5, 5, 5, 60, 60]  # three batches of three costs (test_batches_come_cheapest_first)
    costs = sorted(c for c, _ in plan_groups(lengths, 4096, 256, CPU_COST))
    pool = Pool(token_budget=4096, max_batch=256)
    pool.add(job("bulk", lengths))
    handed = []
    while pool.has_work():
        batch = pool.next_batch()
        handed.append(CPU_COST.cost(len(batch), max(len(j.ids[t]) for j, t in batch)))
    assert handed == costs[::-1]  # so that the batch that ends the job is the shortest: the threads end together


def test_with_another_job_waiting_the_cheapest_batch_of_the_oldest_goes_first() -> None:
    pool = Pool(token_budget=4096, max_batch=256)
    pool.add(job("bulk", [256, 256, 5, 5, 5, 60, 60]))
    pool.add(job("query", [5]))
    first = pool.next_batch()
    assert {j.job_id for j, _ in first} == {"bulk", "query"}  # the query shares the cheap batch, served first


def test_a_job_waiting_past_the_horizon_still_counts_as_waiting() -> None:
    lengths = [256, 256, 5, 5, 5, 60, 60]
    cheapest = min(plan_groups(lengths, 4096, 256, CPU_COST))[1]
    pool = Pool(token_budget=4096, max_batch=256, horizon=len(lengths))
    pool.add(job("bulk", lengths))
    pool.add(job("query", [5]))  # past the horizon: not planned yet, but the bulk is not all the pool holds
    assert sorted(t for _, t in pool.next_batch()) == sorted(cheapest)


def test_pool_drop_forgets_jobs() -> None:
    pool = Pool(token_budget=4096, max_batch=256)
    a, b = job("a", [5]), job("b", [5])
    b.generation = 1
    pool.add(a)
    pool.add(b)
    pool.drop(lambda j: j.generation != 1)
    assert [j.job_id for j, _ in pool.next_batch()] == ["b"] and not pool.has_work()


def test_pool_plans_at_most_its_horizon() -> None:
    pool = Pool(token_budget=1 << 20, max_batch=1 << 20, horizon=10)
    pool.add(job("huge", [5] * 25))
    sizes = []
    while pool.has_work():
        sizes.append(len(pool.next_batch()))
    assert sizes == [10, 10, 5]


# -- the compute thread ------------------------------------------------------------------------------------
@pytest.fixture()
def wake() -> Iterator[socket.socket]:
    r, w = socket.socketpair()
    yield w
    r.close()
    w.close()


def wait_done(compute: ComputeThreads, count: int) -> dict[str, tuple]:
    eventually(lambda: len(compute.done) >= count, f"{count} jobs finished", timeout=30, interval=0.005)
    return {job.job_id if job is not None else error["job"]: (job, error) for job, error in compute.done}


def header(job_id: str, texts: list[str], normalize: bool = True) -> dict:
    return {"job": job_id, "attempt": 0, "texts": texts, "normalize": normalize}


def words(rng: random.Random, n: int) -> str:
    return " ".join(f"w{rng.randint(0, 50)}" for _ in range(n))


@pytest.mark.parametrize("threads", [1, 3])
def test_compute_thread_answers_every_job_in_order_like_one_at_a_time(wake: socket.socket, threads: int) -> None:
    rng = random.Random(1)
    jobs = {f"j{i}": [words(rng, rng.choice([1, 3, 10, 28])) for _ in range(rng.randint(1, 20))] for i in range(15)}
    embedder = FakeEmbedder(dim=8, max_tokens=32, delay_per_token=1e-5)
    compute = ComputeThreads(embedder, token_budget=256, max_batch=16, wake=wake, threads=threads)
    for job_id, texts in jobs.items():  # queued before the thread starts: one pool of every job
        compute.submit(header(job_id, texts, normalize=job_id != "j0"))
    compute.start()
    try:
        done = wait_done(compute, len(jobs))
    finally:
        compute.stop()
    alone = FakeEmbedder(dim=8, max_tokens=32)
    for job_id, texts in jobs.items():
        got, error = done[job_id]
        assert error is None
        expected = np.concatenate([alone.encode_ids(alone.tokenize([t]).ids) for t in texts])
        assert np.allclose(got.vectors, expected if job_id == "j0" else normalize_rows(expected), atol=1e-6)
    assert max(embedder.batches) <= 16 and len(embedder.batches) < sum(map(len, jobs.values()))


class FailingEmbedder(FakeEmbedder):
    def encode_ids(self, ids: list[list[int]]) -> np.ndarray:
        if any(len(seq) > 20 for seq in ids):
            raise RuntimeError("boom")
        return super().encode_ids(ids)


def test_a_failed_batch_fails_its_jobs_and_the_thread_goes_on(wake: socket.socket) -> None:
    compute = ComputeThreads(FailingEmbedder(dim=4, max_tokens=64), token_budget=4096, max_batch=64, wake=wake)
    compute.submit(header("bad", ["short", " ".join(["long"] * 30)]))
    compute.submit(header("good", ["fine", "also fine"]))
    compute.start()
    try:
        done = wait_done(compute, 2)
        compute.submit(header("after", ["still serving"]))
        done = wait_done(compute, 3)
    finally:
        compute.stop()
    assert done["bad"][0] is None and done["bad"][1]["code"] == "ENCODE_FAILED"
    assert done["good"][1] is None and done["after"][1] is None


def test_jobs_from_before_a_reset_are_dropped(wake: socket.socket) -> None:
    embedder = FakeEmbedder(dim=4)
    compute = ComputeThreads(embedder, token_budget=4096, max_batch=64, wake=wake)
    compute.submit(header("stale", ["requeued elsewhere by the broker"]))
    compute.reset()
    compute.submit(header("fresh", ["new registration"]))
    compute.start()
    try:
        done = wait_done(compute, 1)
        # the thread waits for work again: it has answered all it ever will, so a stale answer would show now
        eventually(lambda: compute._idle == 1, "the compute thread idle after the fresh job", timeout=30,
                   interval=0.005)
    finally:
        compute.stop()
    assert list(done) == ["fresh"] and len(compute.done) == 1 and embedder.batches == [1]


def test_input_errors_are_answered_at_submit(wake: socket.socket) -> None:
    compute = ComputeThreads(FakeEmbedder(dim=4, max_tokens=5), token_budget=4096, max_batch=64, wake=wake)
    compute.submit({**header("long", ["a b c d e f g h"]), "options": {"truncate": False}})
    job, error = compute.done.popleft()  # answered on the submitting thread, before any compute
    assert job is None and error["code"] == "INPUT_TOO_LONG" and error["indices"] == [0]


def test_idle_compute_threads_share_one_request_that_fits_one_batch(wake: socket.socket) -> None:
    embedder = FakeEmbedder(dim=4, max_tokens=64, delay_per_token=2e-4)
    compute = ComputeThreads(embedder, token_budget=4096, max_batch=64, wake=wake, threads=2)
    compute.start()
    try:
        # both threads idle, as between a search box's queries
        eventually(lambda: compute._idle == 2, "both compute threads idle", timeout=30, interval=0.005)
        texts = [f"text number {i} with some words" for i in range(12)]
        compute.submit(header("lone", texts))
        done = wait_done(compute, 1)
    finally:
        compute.stop()
        compute.join(5)
    assert compute.batches_by_thread[0] > 0 and compute.batches_by_thread[1] > 0, compute.batches_by_thread
    assert sorted(embedder.batches) == [6, 6]
    alone = FakeEmbedder(dim=4, max_tokens=64)
    assert np.allclose(done["lone"][0].vectors, normalize_rows(alone.encode_ids(alone.tokenize(texts).ids)))


def test_next_batch_cuts_a_lone_batch_into_shares_for_idle_threads() -> None:
    pool = Pool(token_budget=4096, max_batch=64)
    pool.add(PendingJob("j", 0, True, [[1] * n for n in (12, 10, 10, 10, 10)], [], 4))
    assert len(plan_groups([12, 10, 10, 10, 10], 4096, 64, CPU_COST)) == 1  # one batch for one thread...
    first = pool.next_batch(parts=2)
    assert [t for _, t in first] == [0, 1, 2]  # ...cut at half its tokens for two
    assert len(pool.next_batch()) == 2  # the rest, uncut when no other thread is idle
    assert pool.next_batch() == []


def test_share_of_keeps_at_least_one_text_for_the_others() -> None:
    assert share_of([0, 1], [100, 1], 4) == [0]
    assert share_of([0, 1, 2, 3], [5, 5, 5, 5], 2) == [0, 1]
    assert share_of([0, 1, 2, 3], [5, 5, 5, 5], 9) == [0]


class ReleasingEmbedder(FakeEmbedder):
    """Counts the worker's calls of the optional ``release_memory``, and whether one came while a batch ran."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.releases = 0
        self.running = 0
        self.released_while_running = False

    def encode_ids(self, ids: list[list[int]]) -> np.ndarray:
        self.running += 1
        try:
            return super().encode_ids(ids)
        finally:
            self.running -= 1

    def release_memory(self) -> None:
        self.releases += 1
        self.released_while_running |= self.running > 0


def test_an_idle_worker_gives_back_what_a_bulk_load_left_and_a_lone_query_does_not_pay_for_it(
        wake: socket.socket) -> None:
    embedder = ReleasingEmbedder(dim=4, max_tokens=64, delay_per_token=1e-6)
    compute = ComputeThreads(embedder, token_budget=8192, max_batch=64, wake=wake, threads=2)
    compute.idle_tidy = 0.02
    trims: list[float] = []
    compute._trim_heap = lambda: trims.append(time.monotonic())
    compute.start()
    try:
        compute.submit(header("query", ["a short search query"]))
        wait_done(compute, 1)
        eventually(lambda: len(trims) == 1, "the heap trimmed once idle", timeout=30, interval=0.005)
        assert embedder.releases == 0  # a lone query is small: its next pass allocates nothing again
        large = [" ".join(["word"] * 50) for _ in range(60)]  # 3 x 60 x 52 padded tokens >= RELEASE_TOKENS
        for job_id in ("bulk", "bulk2", "bulk3"):
            compute.submit(header(job_id, large))
        wait_done(compute, 4)
        eventually(lambda: embedder.releases == 1 and len(trims) == 2, "the engine's buffers given back once idle",
                   timeout=30, interval=0.005)
        time.sleep(5 * compute.idle_tidy)  # idle on: nothing new ran, so nothing more to give back
        assert embedder.releases == 1 and len(trims) == 2
    finally:
        compute.stop()
    assert not embedder.released_while_running


class BesideEmbedder(FakeEmbedder):
    """Records which of its two ways each batch was sent: ``encode_ids`` (alone) or ``encode_ids_beside``."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ways: list[str] = []

    def encode_ids(self, ids: list[list[int]]) -> np.ndarray:
        self.ways.append("alone")
        return super().encode_ids(ids)

    def encode_ids_beside(self, ids: list[list[int]]) -> np.ndarray:
        self.ways.append("beside")
        return FakeEmbedder.encode_ids(self, ids)


def test_a_lone_query_runs_alone_and_batches_under_load_run_beside_each_other(wake: socket.socket) -> None:
    embedder = BesideEmbedder(dim=4, max_tokens=64, delay_per_token=2e-4)
    compute = ComputeThreads(embedder, token_budget=256, max_batch=8, wake=wake, threads=2)
    compute.start()
    try:
        eventually(lambda: compute._idle == 2, "both compute threads idle", timeout=30, interval=0.005)
        compute.submit(header("query", ["one search query"]))
        wait_done(compute, 1)
        assert embedder.ways == ["alone"]  # nothing else to do: the engine may use every core for it
        texts = [" ".join(["word"] * 30) for _ in range(40)]  # many batches: the threads encode side by side
        compute.submit(header("bulk", texts))
        done = wait_done(compute, 2)
    finally:
        compute.stop()
    assert embedder.ways.count("beside") >= 2, embedder.ways
    alone = FakeEmbedder(dim=4, max_tokens=64)
    assert np.allclose(done["bulk"][0].vectors, normalize_rows(alone.encode_ids(alone.tokenize(texts).ids)))
