"""The engine registry (worker/engines.py) and the selection around the choice (worker/engine_select.py):
which candidates a worker considers, what it measures, what it reads from the cache and what it announces.

No engine is loaded here: the selection runs over a small registry of engines whose preparation is a function,
with measurements handed in (the real children and engines: tests/integration/test_engine.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from worker import precision
from worker.devices import ThreadPlan
from worker.engine_choice import Measurement
from worker.engine_select import cache_file, select
from worker.engines import EMBEDDERS, Candidate, Engine, EngineUnsupported, LoadRequest, Registry


@pytest.fixture(params=[True, False], ids=["bf16-cpu", "avx2-cpu"])
def bf16(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Both kinds of CPU, whatever this one is."""
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: request.param)
    return bool(request.param)


def names(candidates: list[Candidate]) -> list[str]:
    return [str(c) for c in candidates]


def test_auto_on_a_cpu_measures_every_engine_and_never_int8(bf16: bool) -> None:
    found = names(EMBEDDERS.candidates("cpu"))
    ov = "openvino/bf16" if bf16 else "openvino/fp32"
    assert found == ["onnx/fp32", ov, "torch/fp32", *(["torch/bf16"] if bf16 else []), "torch/fp16w"]
    assert not any(name.endswith("int8") for name in found)


def test_a_named_precision_or_backend_narrows_the_candidates(bf16: bool) -> None:
    assert names(EMBEDDERS.candidates("cpu", "onnx", "int8")) == ["onnx/int8"]  # explicit: only when asked
    assert names(EMBEDDERS.candidates("cpu", "auto", "int8")) == ["onnx/int8"]
    assert names(EMBEDDERS.candidates("cpu", "openvino", "fp32")) == ["openvino/fp32"]  # on every CPU
    assert names(EMBEDDERS.candidates("cpu", "auto", "bf16")) == ["openvino/bf16", "torch/bf16"]
    assert names(EMBEDDERS.candidates("cpu", "torch")) == ["torch/fp32", *(["torch/bf16"] if bf16 else []),
                                                           "torch/fp16w"]
    assert names(EMBEDDERS.candidates("cpu", "onnx", "bf16")) == []


def test_a_gpu_is_torch_only() -> None:
    assert names(EMBEDDERS.candidates("cuda:0")) == ["torch/fp16", "torch/bf16", "torch/fp32"]
    assert names(EMBEDDERS.candidates("cuda:1", "onnx")) == []
    assert names(EMBEDDERS.candidates("mps")) == ["torch/fp32"]


def test_every_setting_choice_is_an_engine() -> None:
    from embed_common.settings import BACKENDS, PRECISIONS

    assert set(BACKENDS) == {"auto", *EMBEDDERS.names()}
    offered = {p for e in EMBEDDERS.engines for d in ("cpu", "cuda:0") for p in e.offers(d)}
    assert offered <= set(PRECISIONS) - {"auto"}
    with pytest.raises(EngineUnsupported, match="no embedder engine 'tensorrt'"):
        EMBEDDERS.engine("tensorrt")


# -- the selection, over a small registry ----------------------------------------------------------------
class Lab:
    """A registry of three engines, a model directory, and the measurements a run hands out."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
        self.model = tmp_path / "model"
        self.model.mkdir()
        (self.model / "config.json").write_text('{"hidden_size": 8}')
        self.figures: dict[str, Measurement] = {}
        self.measured: list[str] = []
        self.prepared: list[str] = []
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.unpreparable = False

        def prepare(request: LoadRequest) -> None:
            self.prepared.append(request.model_name)
            if self.unpreparable:
                raise EngineUnsupported("modules ['Transformer', 'Pooling', 'Dense']: not exportable")

        cpu = lambda *p: (lambda device: p if device == "cpu" else ())  # noqa: E731
        self.registry = Registry("embedder", (
            Engine("fast", cpu("bf16"), cpu("int8"), load=lambda r: None, prepare=prepare),
            Engine("plain", cpu("fp32"), cpu(), load=lambda r: None, prepare=prepare),
            Engine("torch", cpu("fp32", "bf16"), cpu(), load=lambda r: None),
        ))

    def request(self) -> LoadRequest:
        return LoadRequest(str(self.model), "m", "m", "cpu", "auto", ThreadPlan(2, 1, 2),
                           lambda kind, data: self.events.append((kind, data)))

    def measure(self, candidates: list[Candidate], reference: Path) -> dict[Candidate, Measurement]:
        self.measured += [str(c) for c in candidates]
        return {c: self.figures[str(c)] for c in candidates}

    def select(self, backend: str = "auto", precision: str = "auto", min_cosine: float = 0.9995) -> Any:
        self.events.clear()
        return select(self.request(), backend, precision, min_cosine, 1536, self.registry, self.measure)

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.events]

    def chosen(self) -> dict[str, Any]:
        return next(data for kind, data in self.events if kind == "engine_chosen")


@pytest.fixture()
def lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Lab:
    lab = Lab(tmp_path, monkeypatch)
    lab.figures = {
        "fast/bf16": Measurement("fast", "bf16", 0.99996, 300, 5, 300),
        "fast/int8": Measurement("fast", "int8", 0.99, 900, 2, 200),
        "plain/fp32": Measurement("plain", "fp32", 0.9999999, 100, 15, 250),
        "torch/fp32": Measurement("torch", "fp32", 1.0, 80, 18, 600),
        "torch/bf16": Measurement("torch", "bf16", 0.99988, 310, 5, 650),
    }
    return lab


def test_the_first_start_measures_every_candidate_and_the_next_reads_the_cache(lab: Lab) -> None:
    first = lab.select()
    assert first.candidate == Candidate("fast", "bf16") and not first.forced
    assert lab.measured == ["fast/bf16", "plain/fp32", "torch/fp32", "torch/bf16"]
    assert lab.kinds() == ["engine_measuring", *["engine_measured"] * 4, "engine_chosen"]
    assert lab.events[0][1]["candidates"] == lab.measured and lab.events[0][1]["cached"] == []
    chosen = lab.chosen()
    assert (chosen["engine"], chosen["precision"], chosen["cosine"], chosen["measured"]) == \
        ("fast", "bf16", 0.99996, True)
    assert cache_file(lab.request(), Candidate("fast", "bf16"), 1536).is_file()
    lab.measured.clear()
    second = lab.select()
    assert lab.measured == [] and second.candidate == first.candidate
    assert lab.kinds() == ["engine_chosen"] and lab.chosen()["measured"] is False
    assert lab.prepared == ["m", "m"]  # the export is prepared once a start (both engines read one file)


def test_the_bar_applies_to_cached_measurements_too(lab: Lab) -> None:
    lab.select()
    lab.measured.clear()
    strict = lab.select(min_cosine=0.99999)  # fast/bf16 and torch/bf16 fail it now: never chosen
    assert lab.measured == [] and strict.candidate == Candidate("plain", "fp32")
    assert set(lab.chosen()["rejected"]) == {"fast/bf16", "torch/bf16"}


def test_a_forced_pair_is_obeyed_even_where_it_fails_the_check(lab: Lab) -> None:
    forced = lab.select("fast", "int8")
    assert forced.candidate == Candidate("fast", "int8") and forced.forced
    assert lab.measured == ["fast/int8"] and lab.chosen()["cosine"] == 0.99  # its cosine is reported
    assert lab.select("torch", "fp32").candidate == Candidate("torch", "fp32")


def test_a_forced_backend_chooses_among_its_precisions(lab: Lab) -> None:
    assert lab.select("torch").candidate == Candidate("torch", "bf16")
    assert lab.select("torch", min_cosine=0.99999).candidate == Candidate("torch", "fp32")
    assert lab.select(precision="fp32").candidate == Candidate("plain", "fp32")


def test_when_nothing_passes_the_worker_does_not_start(lab: Lab) -> None:
    lab.figures["plain/fp32"] = Measurement("plain", "fp32", error="RuntimeError: crashed")
    lab.figures["torch/fp32"] = Measurement("torch", "fp32", 0.9999, 80, 18, 600)
    with pytest.raises(EngineUnsupported, match="no candidate passed"):
        lab.select(precision="fp32", min_cosine=0.99999)


def test_a_failed_measurement_is_cached_but_a_crashed_child_is_measured_again(lab: Lab) -> None:
    lab.figures["fast/bf16"] = Measurement("fast", "bf16", error="ImportError: no runtime")
    lab.figures["plain/fp32"] = Measurement("plain", "fp32", error="measuring failed: timed out")
    assert lab.select().candidate == Candidate("torch", "bf16")
    lab.measured.clear()
    lab.select()
    assert lab.measured == ["plain/fp32"]


def test_an_unpreparable_model_drops_those_engines_and_says_why(lab: Lab) -> None:
    lab.unpreparable = True
    assert lab.select().candidate == Candidate("torch", "bf16")
    assert lab.measured == ["torch/fp32", "torch/bf16"]
    fallback = next(data for kind, data in lab.events if kind == "backend_fallback")
    assert fallback["dropped"] == ["fast", "plain"] and "Dense" in fallback["reason"]
    with pytest.raises(EngineUnsupported, match="Dense"):
        lab.select("plain")  # a forced engine's failure fails the load


def test_no_candidate_for_the_asked_pair() -> None:
    request = LoadRequest("/nonexistent", "m", "m", "cpu", "auto", ThreadPlan(1, 1, 1), lambda k, d: None)
    with pytest.raises(EngineUnsupported, match="onnx does not offer bf16 on cpu"):
        select(request, "onnx", "bf16", 0.9995, 1536)
