"""Which measured candidate serves: a pure function of the measurements (worker/engine_measure.py takes them,
worker/engine_select.py calls :func:`choose`), tested without any engine.

The rule: a candidate whose vectors are further from fp32 sentence-transformers' than ``min_cosine`` on the
check set, or that failed to load or run, is never chosen. Among the rest the best :func:`score` is kept: the
product of its batch throughput, its lone-text speed and (where memory counts) its smallness, each as a share
of the best candidate's, raised to its weight. A tie goes to the earlier candidate (the registry's order).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

MIN_COSINE = 0.9995  # the fidelity check's default bar (--min-cosine)


@dataclass(frozen=True)
class Measurement:
    engine: str
    precision: str
    cosine: float = 0.0  # least cosine to fp32 sentence-transformers over the check set
    texts_per_s: float = 0.0  # a batch mix on every compute thread
    lone_ms: float = 0.0  # one text at a time, nothing else running: the least of several passes
    memory_mb: float = 0.0  # the measuring process's PSS after its runs: what a worker on it holds
    error: str = ""  # why it could not be measured (not offered here, failed to load); never chosen

    @property
    def name(self) -> str:
        return f"{self.engine}/{self.precision}"


@dataclass(frozen=True)
class Weights:
    """How much each figure counts in :func:`score` (0: not at all)."""

    batch: float = 1.0
    lone: float = 1.0
    memory: float = 0.0


CPU_WEIGHTS = Weights(memory=0.5)  # a CPU worker shares its machine (a desktop): its memory counts
GPU_WEIGHTS = Weights()


def weights_for(device: str) -> Weights:
    return CPU_WEIGHTS if device == "cpu" else GPU_WEIGHTS


@dataclass(frozen=True)
class Choice:
    chosen: Measurement | None  # None: no candidate passed
    scores: dict[str, float]  # of each candidate that passed, by name
    rejected: dict[str, str]  # why each other candidate was not eligible, by name

    def reason(self) -> str:
        if self.chosen is None:
            return "no candidate passed: " + "; ".join(f"{k}: {v}" for k, v in self.rejected.items())
        return f"best score of {len(self.scores)} that passed the fidelity check"


def rejection(m: Measurement, min_cosine: float) -> str:
    """Why ``m`` may not be chosen; empty where it may."""
    if m.error:
        return m.error
    if not m.cosine >= min_cosine:
        return f"cosine {m.cosine:.6f} < {min_cosine}"
    if m.texts_per_s <= 0 or m.lone_ms <= 0:
        return "no timing"
    return ""


def score(m: Measurement, best: Measurement, weights: Weights) -> float:
    """``m``'s figures as shares of the best of each (1.0: the best at everything), weighted geometrically."""
    value = (m.texts_per_s / best.texts_per_s) ** weights.batch * (best.lone_ms / m.lone_ms) ** weights.lone
    if weights.memory and m.memory_mb > 0 and best.memory_mb > 0:
        value *= (best.memory_mb / m.memory_mb) ** weights.memory
    return value


def choose(measurements: Sequence[Measurement], min_cosine: float = MIN_COSINE,
           weights: Weights = CPU_WEIGHTS) -> Choice:
    rejected = {m.name: why for m in measurements if (why := rejection(m, min_cosine))}
    eligible = [m for m in measurements if m.name not in rejected]
    if not eligible:
        return Choice(None, {}, rejected)
    best = Measurement("", "", texts_per_s=max(m.texts_per_s for m in eligible),
                       lone_ms=min(m.lone_ms for m in eligible),
                       memory_mb=min((m.memory_mb for m in eligible if m.memory_mb > 0), default=0.0))
    scores = {m.name: score(m, best, weights) for m in eligible}
    chosen = max(eligible, key=lambda m: scores[m.name])  # max keeps the first of equals
    return Choice(chosen, scores, rejected)
