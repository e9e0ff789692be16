"""How many CPU workers `--workers auto` plans, and with how many torch threads each."""

from __future__ import annotations

import shutil

import pytest

from supervisor import supervisor
from supervisor.supervisor import ClusterSettings, Supervisor, plan_devices


@pytest.fixture()
def machine(monkeypatch: pytest.MonkeyPatch):
    def set_machine(cores: int, devices: list[str]) -> None:
        monkeypatch.setattr(supervisor, "physical_cores", lambda: cores)
        monkeypatch.setattr(supervisor, "detect_devices", lambda: devices)

    return set_machine


@pytest.mark.parametrize(("cores", "threads", "workers"), [(1, 0, 1), (2, 0, 2), (16, 0, 2), (2, 2, 1), (8, 8, 1)])
def test_auto_plans_cpu_workers_by_cores(machine, cores: int, threads: int, workers: int) -> None:
    machine(cores, ["cpu"])
    assert plan_devices("auto", "auto", threads) == ["cpu"] * workers
    assert plan_devices("cpu", "auto", threads) == ["cpu"] * workers


def test_gpus_get_one_worker_each_and_an_explicit_count_wins(machine) -> None:
    machine(16, ["cuda:0", "cuda:1"])
    assert plan_devices("auto", "auto") == ["cuda:0", "cuda:1"]
    machine(2, ["cpu"])
    assert plan_devices("auto", "3") == ["cpu"] * 3


@pytest.mark.parametrize(("cores", "expected"), [(2, [("cpu", "1"), ("cpu", "1")]), (8, [("cpu", "4"), ("cpu", "4")])])
def test_the_cores_are_shared_out_as_torch_threads(machine, cores: int, expected: list[tuple[str, str]]) -> None:
    machine(cores, ["cpu"])
    sup = Supervisor(ClusterSettings())
    try:
        sup.plan()
        workers = [c for c in sup.children if c.kind == "worker"]
        assert [(c.device, c.argv[c.argv.index("--threads") + 1]) for c in workers] == expected
    finally:
        sup.context.term()
        shutil.rmtree(sup.rundir, ignore_errors=True)
