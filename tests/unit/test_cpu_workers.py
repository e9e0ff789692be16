"""How many CPU workers `--workers auto` plans, and with how many compute and intra-op threads each."""

from __future__ import annotations

import shutil

import pytest

from supervisor import supervisor
from supervisor.supervisor import ClusterSettings, Supervisor, plan_devices


@pytest.fixture()
def machine(monkeypatch: pytest.MonkeyPatch):
    def set_machine(cores: int, devices: list[str]) -> None:
        monkeypatch.setattr("worker.devices.physical_cores", lambda: cores)  # worker/devices.py: compute_threads
        monkeypatch.setattr(supervisor, "detect_devices", lambda: devices)

    return set_machine


@pytest.mark.parametrize("cores", [1, 2, 16])
def test_auto_plans_one_cpu_worker_whatever_the_cores(machine, cores: int) -> None:
    machine(cores, ["cpu"])
    assert plan_devices("auto", "auto") == ["cpu"]
    assert plan_devices("cpu", "auto") == ["cpu"]  # --threads 2 too: test_the_cores_are_shared_out_...


def test_gpus_get_one_worker_each_and_an_explicit_count_wins(machine) -> None:
    machine(16, ["cuda:0", "cuda:1"])
    assert plan_devices("auto", "auto") == ["cuda:0", "cuda:1"]
    machine(2, ["cpu"])
    assert plan_devices("auto", "3") == ["cpu"] * 3


def worker_threads(settings: ClusterSettings) -> list[tuple[str, str, str, str]]:
    sup = Supervisor(settings)
    try:
        sup.plan()
        workers = [c for c in sup.children if c.kind == "worker"]
        return [(c.device, c.argv[c.argv.index("--threads") + 1], c.argv[c.argv.index("--compute-threads") + 1],
                 c.argv[c.argv.index("--backend") + 1]) for c in workers]
    finally:
        sup.context.term()
        shutil.rmtree(sup.rundir, ignore_errors=True)


@pytest.mark.parametrize(("cores", "settings", "expected"), [
    (2, ClusterSettings(), [("cpu", "1", "2", "auto")]),
    (8, ClusterSettings(), [("cpu", "1", "8", "auto")]),
    (8, ClusterSettings(workers="2"), [("cpu", "1", "4", "auto")] * 2),
    (8, ClusterSettings(threads=2), [("cpu", "2", "4", "auto")]),
    (2, ClusterSettings(workers="2", threads=1), [("cpu", "1", "1", "auto")] * 2),
    (2, ClusterSettings(compute_threads=3, backend="torch"), [("cpu", "1", "3", "torch")]),
])
def test_the_cores_are_shared_out_as_compute_threads(machine, cores: int, settings: ClusterSettings,
                                                     expected: list[tuple[str, str, str, str]]) -> None:
    machine(cores, ["cpu"])
    assert worker_threads(settings) == expected


def test_a_gpu_worker_gets_no_cpu_thread_options(machine) -> None:
    machine(8, ["cuda:0"])
    sup = Supervisor(ClusterSettings())
    try:
        sup.plan()
        (worker,) = [c for c in sup.children if c.kind == "worker"]
        assert worker.device == "cuda:0" and "--compute-threads" not in worker.argv
    finally:
        sup.context.term()
        shutil.rmtree(sup.rundir, ignore_errors=True)
