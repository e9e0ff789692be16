"""The engine chosen by measurement, through the real cluster (worker/engine_select.py), on any CPU.

- a first start (an empty cache) measures every candidate ``auto`` offers here, says so in PROGRESS, and serves
  the one the rule keeps: the best score among those that pass the fidelity check (the rule recomputed here
  from the figures the worker reported); /info, /health and /status.json say which, with its cosine;
- the vectors are sentence-transformers fp32's;
- the next start reads the cache (measures nothing); with the bar raised above a candidate's cosine, that
  candidate is never chosen;
- ``--backend``/``--precision`` are obeyed, int8 too (explicit only), and its cosine is reported.

Nothing here assumes which engine wins on this CPU.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench import corpus
from tests.conftest import Cluster, cosine_rows, eventually
from worker.engine_choice import MIN_COSINE, Measurement, choose, weights_for

pytestmark = pytest.mark.slow


def events_of(cluster: Cluster, kind: str) -> list[dict[str, Any]]:
    return [e["data"] for e in cluster.events if e["type"] == kind]


def measurements(cluster: Cluster) -> list[Measurement]:
    fields = set(Measurement.__dataclass_fields__)
    return [Measurement(**{k: v for k, v in d.items() if k in fields}) for d in events_of(cluster, "engine_measured")]


@dataclass
class First:
    """What the module's first start (an empty cache) said and served."""

    cache: Path
    measured: list[Measurement]
    measuring: list[dict[str, Any]]
    chosen: dict[str, Any]
    info: dict[str, Any]
    health: dict[str, Any]
    status: dict[str, Any]
    vectors: np.ndarray = field(repr=False)
    texts: list[str] = field(repr=False)


@pytest.fixture(scope="module")
def first(tmp_path_factory: pytest.TempPathFactory) -> First:
    cache = tmp_path_factory.mktemp("xdg-cache")
    c = Cluster("--workers", "1", env={"XDG_CACHE_HOME": str(cache)})
    try:
        c.wait_ready(timeout=600)  # the export and every candidate's measurement
        texts = [row["text"] for row in corpus.load(64)] + ["", "42"]
        (chosen,) = events_of(c, "engine_chosen")
        vectors = np.asarray(c.embed(texts))
        status = eventually(lambda: (s := c.get("/status.json").json())["workers"] and s, "a status row", 30)
        return First(cache, measurements(c), events_of(c, "engine_measuring"), chosen, c.get("/info").json(),
                     c.get("/health").json(), status, vectors, texts)
    finally:
        assert c.stop() == 0, c.log()


def test_a_first_start_measures_every_candidate_and_keeps_the_best_that_passes(first: First) -> None:
    (measuring,) = first.measuring
    names = [m.name for m in first.measured]
    assert measuring["candidates"] == names and measuring["cached"] == []
    assert {"onnx/fp32", "torch/fp32"} <= set(names)  # on every CPU
    assert any(n.startswith("openvino/") for n in names)
    assert not any(n.endswith("int8") for n in names), "int8 is explicit only"
    ok = [m for m in first.measured if not m.error]
    assert ok and all(m.texts_per_s > 0 and m.lone_ms > 0 and m.memory_mb > 0 and 0 < m.cosine <= 1.0 for m in ok)
    expected = choose(first.measured, MIN_COSINE, weights_for("cpu")).chosen  # the rule, on the real figures
    assert expected is not None
    assert (first.chosen["engine"], first.chosen["precision"]) == (expected.engine, expected.precision)
    assert first.chosen["cosine"] == expected.cosine >= MIN_COSINE
    assert first.chosen["measured"] is True and first.chosen["forced"] is False


def test_info_health_and_the_status_page_say_which_engine_and_its_cosine(first: First) -> None:
    engine, precision, cosine = first.chosen["engine"], first.chosen["precision"], first.chosen["cosine"]
    assert (first.info["backend"], first.info["precision"], first.info["cosine"]) == ([engine], [precision], cosine)
    (worker,) = first.health["workers"]
    assert (worker["backend"], worker["precision"], worker["cosine"]) == (engine, precision, cosine)
    assert (first.status["backend"], first.status["cosine"]) == ([engine], cosine)
    assert first.status["workers"][0]["backend"] == engine


def test_the_vectors_are_sentence_transformers_fp32s(first: First, reference_model: Any) -> None:
    expected = reference_model.encode(first.texts, normalize_embeddings=True, batch_size=32)
    assert cosine_rows(first.vectors, expected).min() >= MIN_COSINE


@pytest.fixture(scope="module")
def strict(first: First) -> Iterator[tuple[Cluster, float]]:
    """A second start on the same cache with the bar raised just above the chosen one's cosine (where another
    passed with a better one; else just above the worst that passed): that one must fail it now."""
    passing = sorted({m.cosine for m in first.measured if not m.error and m.cosine >= MIN_COSINE})
    if len(passing) < 2:
        pytest.skip(f"every candidate that passed has the same cosine here ({passing}): no bar between them")
    below = first.chosen["cosine"] if first.chosen["cosine"] < passing[-1] else passing[0]
    bar = float(np.nextafter(np.float32(below), np.float32(2)))
    c = Cluster("--workers", "1", "--min-cosine", repr(bar), env={"XDG_CACHE_HOME": str(first.cache)})
    try:
        yield c.wait_ready(), bar
    finally:
        assert c.stop() == 0, c.log()


def test_the_next_start_reads_the_cache_and_a_candidate_below_the_bar_is_never_chosen(
        first: First, strict: tuple[Cluster, float]) -> None:
    c, bar = strict
    assert events_of(c, "engine_measuring") == [] and events_of(c, "engine_measured") == []
    (chosen,) = events_of(c, "engine_chosen")
    assert chosen["measured"] is False and chosen["min_cosine"] == bar
    failing = {m.name for m in first.measured if m.cosine < bar}
    assert failing and failing <= set(chosen["rejected"])
    assert f"{chosen['engine']}/{chosen['precision']}" not in failing and chosen["cosine"] >= bar
    expected = choose(first.measured, bar, weights_for("cpu")).chosen
    assert expected is not None and (chosen["engine"], chosen["precision"]) == (expected.engine, expected.precision)
    assert c.get("/info").json()["cosine"] == chosen["cosine"]


def test_a_forced_pair_is_obeyed_int8_too_with_its_cosine_reported(first: First, reference_model: Any) -> None:
    c = Cluster("--workers", "1", "--backend", "onnx", "--precision", "int8",
                env={"XDG_CACHE_HOME": str(first.cache)})
    try:
        c.wait_ready(timeout=600)
        (measuring,) = events_of(c, "engine_measuring")
        assert measuring["candidates"] == ["onnx/int8"]  # the one asked for, measured for its cosine
        (chosen,) = events_of(c, "engine_chosen")
        assert (chosen["engine"], chosen["precision"], chosen["forced"]) == ("onnx", "int8", True)
        info = c.get("/info").json()
        assert (info["backend"], info["precision"], info["cosine"]) == (["onnx"], ["int8"], chosen["cosine"])
        assert 0 < chosen["cosine"] < 1.0  # quantized: its vectors drift, and the check says how far
        texts = first.texts[:16]
        served = np.asarray(c.embed(texts))
        assert cosine_rows(served, reference_model.encode(texts, normalize_embeddings=True)).min() > 0.9
    finally:
        assert c.stop() == 0, c.log()
