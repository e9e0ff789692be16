"""Capacity-aware dispatch (broker.balancing) driven through the real Broker, in process and in simulated time.

Fake workers of different speeds register with a Broker that has no sockets (its sends go nowhere); every
message reaches it through ``Broker.handle`` exactly as off the wire. A fake worker encodes the jobs it holds
one after another at its own rate and, when it finishes one, answers RESULT and reports its measured rate in a
HEARTBEAT, as a real worker does. The clock is simulated, so the shares and finish times are exact and no
test depends on how busy the machine is.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

import numpy as np
import pytest

from broker import balancing
from broker.broker import Broker, BrokerSettings
from embed_common import protocol
from embed_common.protocol import Command

DIM = 4
CLIENT = b"front"


@dataclass
class FakeWorker:
    name: str
    rate: float  # texts per second it really encodes
    device: str = "cpu"
    capacity: int = 1024
    reports: bool = True  # sends its measured rate in heartbeats
    queue: list[tuple[str, int, int]] = field(default_factory=list)  # (job, attempt, n) in arrival order
    busy_until: float = 0.0
    texts_done: int = 0
    busy_seconds: float = 0.0
    finished: list[tuple[float, str, int]] = field(default_factory=list)  # (time, job, n)

    @property
    def key(self) -> tuple[str, bytes]:
        return ("local", self.name.encode())


class Simulation:
    def __init__(self, workers: list[FakeWorker]) -> None:
        self.broker = Broker(BrokerSettings(client_address="inproc://unused", worker_address="inproc://unused"))
        self.workers = {w.key: w for w in workers}
        self.now = 0.0
        self.events: list[tuple[float, int, bytes]] = []  # (time, seq, worker name): a job finishes
        self.seq = 0
        self.submitted = 0
        for worker in workers:
            self.deliver(worker, Command.READY, {"model": "fake/model", "dim": DIM, "device": worker.device,
                                                 "capacity": worker.capacity, "worker_id": worker.name})
        assert len(self.broker.workers) == len(workers)

    def deliver(self, worker: FakeWorker, command: Command, header: dict, *payload: bytes) -> None:
        self.broker.handle("local", [worker.name.encode(), *protocol.encode(command, header, *payload)])

    def submit(self, texts: int) -> str:
        job = f"job-{self.submitted}"
        self.submitted += 1
        self.broker.handle("client", [CLIENT, *protocol.encode(
            Command.SUBMIT, {"job": job, "n": texts, "normalize": True, "timeout_ms": 10**9},
            protocol.encode_texts(["x"] * texts))])
        return job

    def dispatch(self) -> None:
        """Let the broker hand out jobs, and start each fake worker on what it was given."""
        self.broker.dispatch()
        for key, record in self.broker.workers.items():
            fake = self.workers[key]
            held = {job for job, _, _ in fake.queue}
            for job in record.inflight.values():
                if job.job_id not in held:
                    fake.queue.append((job.job_id, job.attempt, job.count))
                    self._schedule(fake)

    def _schedule(self, fake: FakeWorker) -> None:
        _, _, n = fake.queue[-1]  # the job just given: it starts when the ones before it are done
        start = max(self.now, fake.busy_until)
        fake.busy_until = start + n / fake.rate
        heapq.heappush(self.events, (fake.busy_until, self.seq, fake.name.encode()))
        self.seq += 1

    def step(self) -> bool:
        """Advance to the next finished job and report it; False when nothing is left to do."""
        if not self.events:
            return False
        self.now, _, name = heapq.heappop(self.events)
        fake = self.workers[("local", name)]
        job, attempt, n = fake.queue.pop(0)
        fake.texts_done += n
        fake.busy_seconds += n / fake.rate
        fake.finished.append((self.now, job, n))
        vectors = protocol.encode_vectors(np.ones((n, DIM), dtype="float32"))
        self.deliver(fake, Command.RESULT, {"job": job, "attempt": attempt, "n": n, "dim": DIM}, vectors)
        if fake.reports:
            self.deliver(fake, Command.HEARTBEAT, {"stats": {
                "texts_done": fake.texts_done, "texts_per_s": round(fake.texts_done / fake.busy_seconds, 1)}})
        return True

    def run(self) -> float:
        """Serve everything submitted; the time the last job finished."""
        self.dispatch()
        while self.step():
            self.dispatch()
        assert not self.broker.queued_texts() and not self.broker.jobs, "every job is answered"
        return self.now

    def texts(self, name: str) -> int:
        return sum(n for _, _, n in next(w for w in self.workers.values() if w.name == name).finished)


def test_saturated_workers_get_texts_in_proportion_to_their_speed() -> None:
    sim = Simulation([FakeWorker("gpu", rate=1000.0, device="cuda:0"), FakeWorker("cpu", rate=100.0)])
    for _ in range(400):
        sim.submit(64)
    end = sim.run()
    total = 400 * 64
    share = sim.texts("gpu") / total
    assert share == pytest.approx(1000 / 1100, abs=0.03), share
    ideal = total / 1100  # both busy all the time
    assert end <= ideal * 1.03 + 64 / 100, (end, ideal)


@pytest.mark.parametrize("measured", [True, False])
@pytest.mark.parametrize(("slow_rate", "jobs"), [(100.0, 40), (100.0, 400), (20.0, 40), (20.0, 400)])
def test_the_slow_worker_never_becomes_the_tail(slow_rate: float, jobs: int, measured: bool) -> None:
    gpu, cpu = FakeWorker("gpu", rate=1000.0, device="cuda:0"), FakeWorker("cpu", rate=slow_rate)
    sim = Simulation([gpu, cpu])
    if measured:  # it has served before; otherwise the broker knows only the prior for a CPU
        sim.deliver(cpu, Command.HEARTBEAT, {"stats": {"texts_done": 1000, "texts_per_s": slow_rate}})
    for _ in range(jobs):
        sim.submit(64)
    end = sim.run()
    gpu_done = max(t for t, _, _ in gpu.finished)
    cpu_done = max((t for t, _, _ in cpu.finished), default=0.0)
    # measured, it finishes about when the fast one goes idle; unmeasured, at worst its first job runs over
    overrun = 0.1 * 64 / slow_rate if measured else 64 / slow_rate
    assert cpu_done <= gpu_done + overrun, (cpu_done, gpu_done)
    assert end <= jobs * 64 / (1000 + slow_rate) * 1.05 + overrun
    assert end < jobs / 2 * 64 / slow_rate / 3  # round robin: half the jobs wait for the slow worker


def test_a_light_load_goes_only_to_the_worker_that_finishes_first() -> None:
    sim = Simulation([FakeWorker("gpu", rate=1000.0, device="cuda:0"), FakeWorker("cpu", rate=20.0)])
    for _ in range(5):
        sim.submit(16)
        sim.run()
    assert sim.texts("gpu") == 80 and sim.texts("cpu") == 0


def test_measured_rates_replace_the_device_prior() -> None:
    # two CPU workers look alike before they measure themselves; one is four times faster
    fast, slow = FakeWorker("fast", rate=400.0), FakeWorker("slow", rate=100.0)
    sim = Simulation([fast, slow])
    for _ in range(300):
        sim.submit(64)
    sim.run()
    share = sim.texts("fast") / (300 * 64)
    assert share == pytest.approx(0.8, abs=0.04), share


def test_a_worker_whose_rate_was_underestimated_still_gets_work_under_load_and_is_measured_again() -> None:
    gpu, cpu = FakeWorker("gpu", rate=1000.0, device="cuda:0"), FakeWorker("cpu", rate=400.0)
    sim = Simulation([gpu, cpu])
    # it once reported a poor rate (long texts, a busy machine): one job now looks like 3.2 s of work
    sim.deliver(cpu, Command.HEARTBEAT, {"stats": {"texts_done": 10_000, "texts_per_s": 20.0}})
    for _ in range(300):
        sim.submit(64)
    end = sim.run()
    share = sim.texts("cpu") / (300 * 64)
    assert share == pytest.approx(400 / 1400, abs=0.05), share
    assert end <= 300 * 64 / 1400 * 1.05 + 64 / 400


def test_equal_workers_share_evenly_and_without_measurements_by_device_prior() -> None:
    a, b = FakeWorker("a", rate=200.0, reports=False), FakeWorker("b", rate=200.0, reports=False)
    sim = Simulation([a, b])
    for _ in range(100):
        sim.submit(64)
    sim.run()
    assert abs(sim.texts("a") - sim.texts("b")) <= 2 * 64


def test_credit_is_a_window_of_work_within_one_job_and_the_capacity() -> None:
    sim = Simulation([FakeWorker("gpu", rate=5000.0, device="cuda:0", capacity=1024),
                      FakeWorker("cpu", rate=30.0)])
    for _ in range(200):
        sim.submit(64)
    sim.dispatch()
    records = {w.worker_id: w for w in sim.broker.workers.values()}
    # before measurements: the device priors (cuda 1000/s, cpu 100/s) for one WINDOW
    assert records["gpu"].inflight_texts <= balancing.credit(records["gpu"]) == 1000
    assert records["cpu"].inflight_texts <= balancing.credit(records["cpu"]) == 100
    sim.run()
    assert balancing.credit(records["gpu"]) == 1024  # 5000/s for a second, capped by its capacity
    assert balancing.credit(records["cpu"]) == balancing.MIN_CREDIT  # 30/s: still one full job
    described = {w["id"]: w for w in sim.broker.status()["workers"]}
    assert described["gpu"]["credit"] == 1024 and described["gpu"]["texts_per_s"] == pytest.approx(5000, rel=0.01)


def test_an_unmeasured_worker_is_assumed_as_fast_as_its_measured_twin() -> None:
    """Two CPU workers of a big model (6 texts/s), one measured, one not yet: the device prior (100 texts/s)
    would make the unmeasured one look 16x faster and take every job until it had measured itself."""
    measured, fresh = FakeWorker("measured", 6.0), FakeWorker("fresh", 6.0)
    sim = Simulation([measured, fresh])
    sim.deliver(measured, Command.HEARTBEAT, {"stats": {"texts_done": 100, "texts_per_s": 6.0}})
    sim.deliver(fresh, Command.HEARTBEAT, {"stats": {"texts_done": 10, "texts_per_s": 6.3}})
    workers = list(sim.broker.workers.values())
    assert [balancing.rate(w, workers) for w in workers] == [6.0, 6.0]
    assert balancing.rate(workers[1]) == balancing.PRIOR_RATE["cpu"]  # alone, only the prior is left
    for _ in range(16):
        sim.submit(8)
    sim.dispatch()
    sim.run()
    assert sim.texts("measured") == sim.texts("fresh") == 64
