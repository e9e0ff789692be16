"""OpenVINO's pass gate (worker/openvino_backend.py ``PassGate``): a pass alone never shares the cores."""

from __future__ import annotations

import threading
import time

from worker.openvino_backend import PassGate


def test_passes_beside_run_together_and_a_pass_alone_runs_with_none() -> None:
    gate = PassGate()
    lock = threading.Lock()
    running = {"alone": 0, "beside": 0}
    seen: list[tuple[int, int]] = []
    peak_beside = 0

    def run(way: str) -> None:
        nonlocal peak_beside
        with getattr(gate, way)():
            with lock:
                running[way] += 1
                seen.append((running["alone"], running["beside"]))
                peak_beside = max(peak_beside, running["beside"])
            time.sleep(0.01)
            with lock:
                running[way] -= 1

    threads = [threading.Thread(target=run, args=("alone" if i % 4 == 0 else "beside",)) for i in range(24)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert not any(thread.is_alive() for thread in threads)
    assert len(seen) == 24
    assert all(alone == 0 or (alone == 1 and beside == 0) for alone, beside in seen), seen
    assert peak_beside >= 2  # passes beside each other did overlap


def test_a_pass_alone_waits_for_the_passes_beside_to_end() -> None:
    gate = PassGate()
    order: list[str] = []

    def alone() -> None:
        with gate.alone():
            order.append("alone")

    with gate.beside():
        waiter = threading.Thread(target=alone)
        waiter.start()
        time.sleep(0.05)
        order.append("beside ends")
    waiter.join(5)
    assert order == ["beside ends", "alone"]
