"""The engine choice as a pure function of measurements (worker/engine_choice.py): no engine is loaded.

The rule: a candidate that fails the fidelity check (or failed to run) is never chosen, whatever its speed;
among the rest the best score (batch throughput, lone-text speed and, on a CPU, memory) is kept. The same rule is
checked on real measurements through the real worker in tests/integration/test_engine.py.
"""

from __future__ import annotations

import itertools
import random

import pytest

from worker.engine_choice import (
    CPU_WEIGHTS,
    GPU_WEIGHTS,
    MIN_COSINE,
    Measurement,
    Weights,
    choose,
    rejection,
    score,
    weights_for,
)


def m(name: str, cosine: float = 0.9999, rate: float = 100.0, lone: float = 10.0, memory: float = 300.0,
      error: str = "") -> Measurement:
    engine, precision = name.split("/")
    return Measurement(engine, precision, cosine, rate, lone, memory, error)


def test_a_candidate_that_fails_fidelity_is_never_chosen_however_fast() -> None:
    fast_but_off = m("onnx/int8", cosine=0.99, rate=1000, lone=1, memory=50)
    honest = m("onnx/fp32", cosine=0.9999999, rate=100, lone=10, memory=250)
    choice = choose([fast_but_off, honest])
    assert choice.chosen == honest
    assert "cosine" in choice.rejected["onnx/int8"] and "onnx/int8" not in choice.scores


def test_the_bar_is_a_setting_and_it_is_inclusive() -> None:
    a, b = m("openvino/bf16", cosine=0.99995, rate=300, lone=5), m("onnx/fp32", cosine=0.9999999)
    assert choose([a, b]).chosen == a
    assert choose([a, b], min_cosine=0.99995).chosen == a
    assert choose([a, b], min_cosine=0.99996).chosen == b
    assert rejection(m("x/y", cosine=float("nan")), MIN_COSINE)  # no number is not a pass


def test_a_failed_or_untimed_candidate_is_never_chosen() -> None:
    broken = m("openvino/bf16", error="ImportError: no openvino", rate=1000, lone=1)
    untimed = m("torch/bf16", rate=0)
    ok = m("onnx/fp32")
    choice = choose([broken, untimed, ok])
    assert choice.chosen == ok and set(choice.rejected) == {"openvino/bf16", "torch/bf16"}


def test_nothing_passes_nothing_is_chosen_and_the_reason_names_each() -> None:
    choice = choose([m("a/fp32", cosine=0.5), m("b/bf16", error="crashed")])
    assert choice.chosen is None
    assert "a/fp32" in choice.reason() and "crashed" in choice.reason()


def test_the_chosen_has_the_best_score_of_those_that_pass_for_any_measurements() -> None:
    rng = random.Random(7)
    for _ in range(300):
        ms = [m(f"e{i}/p", cosine=rng.choice([0.999, 0.9996, 0.99999, 1.0]), rate=rng.uniform(10, 500),
                lone=rng.uniform(2, 50), memory=rng.uniform(100, 900)) for i in range(rng.randint(1, 6))]
        for weights in (CPU_WEIGHTS, GPU_WEIGHTS):
            choice = choose(ms, MIN_COSINE, weights)
            passing = [x for x in ms if x.cosine >= MIN_COSINE]
            if not passing:
                assert choice.chosen is None
                continue
            assert choice.chosen in passing
            assert choice.scores[choice.chosen.name] == max(choice.scores.values())
            assert set(choice.scores) == {x.name for x in passing}


def test_faster_at_everything_wins_and_the_score_is_one_for_the_best_at_everything() -> None:
    slow, fast = m("onnx/fp32", rate=100, lone=16, memory=250), m("openvino/bf16", rate=250, lone=6, memory=250)
    for a, b in itertools.permutations([slow, fast]):
        assert choose([a, b]).chosen == fast
    assert choose([fast, slow]).scores["openvino/bf16"] == pytest.approx(1.0)


def test_memory_counts_on_a_cpu_and_not_on_a_gpu() -> None:
    big = m("torch/bf16", rate=110, lone=9.5, memory=700)
    small = m("openvino/bf16", rate=100, lone=10, memory=300)
    assert weights_for("cpu") == CPU_WEIGHTS and weights_for("cuda:0") == GPU_WEIGHTS
    assert choose([big, small], weights=weights_for("cpu")).chosen == small
    assert choose([big, small], weights=weights_for("cuda:0")).chosen == big


def test_a_tie_goes_to_the_earlier_candidate() -> None:
    a, b = m("onnx/fp32"), m("openvino/fp32")
    assert choose([a, b]).chosen == a and choose([b, a]).chosen == b


def test_score_weights() -> None:
    best = m("best/x", rate=200, lone=5, memory=200)
    half = m("half/x", rate=100, lone=10, memory=400)
    assert score(half, best, Weights(batch=1, lone=0)) == pytest.approx(0.5)
    assert score(half, best, Weights(batch=0, lone=1)) == pytest.approx(0.5)
    assert score(half, best, Weights(batch=0, lone=0, memory=1)) == pytest.approx(0.5)
    assert score(half, best, Weights(batch=1, lone=1, memory=0.5)) == pytest.approx(0.25 * 0.5 ** 0.5)
