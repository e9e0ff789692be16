"""Which backend a worker loads (worker/main.py load_embedder), with both embedders stubbed out: the real ones
are exercised in tests/integration/test_cpu_worker.py."""

from __future__ import annotations

from typing import Any

import pytest

from worker import embedder as embedder_module
from worker import main, onnx_backend
from worker.onnx_backend import OnnxUnsupported
from worker.worker import WorkerSettings


@pytest.fixture()
def loads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any]]:
    seen: list[tuple[str, Any]] = []

    def fake_prepare(path: str, model_id: str, emit: Any, threads: int = 1, model_name: str = "") -> str:
        if "unsupported" in path:
            raise OnnxUnsupported("modules ['Transformer', 'Pooling', 'Dense']")
        seen.append(("onnx", threads))
        return "onnx"

    class FakeTorch:
        def __init__(self, path: str, model_id: str, device: str, precision: str, threads: int | None) -> None:
            seen.append(("torch", threads))

    monkeypatch.setattr(onnx_backend, "prepare", fake_prepare)
    monkeypatch.setattr(embedder_module, "SentenceTransformerEmbedder", FakeTorch)
    monkeypatch.setattr("worker.devices.physical_cores", lambda: 4)
    return seen


def load(device: str, path: str = "/models/minilm", events: list | None = None, **settings: Any) -> Any:
    emit = (lambda kind, data: events.append((kind, data))) if events is not None else (lambda kind, data: None)
    return main.load_embedder(WorkerSettings(broker="ipc://x", **settings), path, "minilm", device, emit)


def test_auto_is_onnx_on_cpu_and_torch_elsewhere(loads: list) -> None:
    load("cpu")
    load("cuda:0")
    load("mps")
    assert loads == [("onnx", 1), ("torch", None), ("torch", None)]


def test_a_torch_only_precision_or_backend_torch_keeps_torch_on_cpu(loads: list) -> None:
    load("cpu", precision="fp16w")
    load("cpu", backend="torch")
    load("cpu", backend="torch", compute_threads=1)  # one compute thread: torch may use every core
    assert loads == [("torch", 1), ("torch", 1), ("torch", 4)]


def test_auto_falls_back_to_torch_and_says_why(loads: list) -> None:
    events: list = []
    load("cpu", path="/models/unsupported", events=events)
    assert loads == [("torch", 1)]
    assert events == [("backend_fallback", {"model": "minilm", "backend": "torch",
                                            "reason": "modules ['Transformer', 'Pooling', 'Dense']"})]


def test_backend_onnx_insists(loads: list) -> None:
    with pytest.raises(OnnxUnsupported, match="Dense"):
        load("cpu", path="/models/unsupported", backend="onnx")
    with pytest.raises(OnnxUnsupported, match="cuda:0"):
        load("cuda:0", backend="onnx")
    assert loads == []
