"""The engines a worker can run a model on, registered in one place.

An engine is one module implementing the embedder Protocol (worker/embedder.py) over one runtime:

- ``onnx``: ONNX Runtime on the CPU, on the ONNX file the worker exports (worker/onnx_backend.py); fp32, and
  int8 (dynamic quantization) only when asked;
- ``openvino``: OpenVINO on the CPU, on that same file (worker/openvino_backend.py); bf16 where the CPU has
  native bf16, fp32 on every CPU;
- ``torch``: sentence-transformers itself (worker/embedder.py) on any device: fp32, bf16, fp16w on a CPU
  (worker/precision.py), fp16 and bf16 on a GPU.

Each :class:`Engine` says which precisions ``auto`` measures on a device (:attr:`Engine.measured`), which it
offers only when asked (:attr:`Engine.explicit`: int8, whose vectors drift), the step the worker runs before
loading it (:attr:`Engine.prepare`: the ONNX export) and how to load it (:attr:`Engine.load`); each imports
its runtime only when called, so that a worker holds the chosen engine's runtime alone. Which candidate
serves is decided in worker/engine_select.py, by measurement (worker/engine_choice.py).

A registry is a table of engines for one kind of model: :data:`EMBEDDERS` holds the embedding engines; a
second kind (a cross-encoder) registers its own table of the same :class:`Engine` records.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from worker import precision as precisions
from worker.devices import ThreadPlan

Emit = Callable[[str, dict[str, Any]], None]


@dataclass(frozen=True)
class LoadRequest:
    """Everything an engine needs to load a model: the same for measuring and for serving."""

    path: str  # the model directory
    model_id: str  # what the user asked for (/info's model_id)
    model_name: str  # its short name (PROGRESS)
    device: str
    precision: str  # one the engine offers on this device (never auto)
    threads: ThreadPlan
    emit: Emit


class EngineUnsupported(RuntimeError):
    """This engine cannot take this model or device; the message says why in one line."""


@dataclass(frozen=True)
class Candidate:
    """One engine at one precision: what is measured, chosen and served."""

    engine: str
    precision: str

    def __str__(self) -> str:
        return f"{self.engine}/{self.precision}"


@dataclass(frozen=True)
class Engine:
    name: str
    measured: Callable[[str], tuple[str, ...]]  # precisions ``auto`` measures on a device (none: not there)
    explicit: Callable[[str], tuple[str, ...]]  # precisions it offers on a device only when asked
    load: Callable[[LoadRequest], Any]
    prepare: Callable[[LoadRequest], None] | None = None  # run by the worker before measuring or loading

    def offers(self, device: str) -> tuple[str, ...]:
        return (*self.measured(device), *self.explicit(device))


@dataclass(frozen=True)
class Registry:
    kind: str  # the kind of model its engines serve
    engines: tuple[Engine, ...]

    def engine(self, name: str) -> Engine:
        for engine in self.engines:
            if engine.name == name:
                return engine
        raise EngineUnsupported(f"no {self.kind} engine {name!r} (engines: {', '.join(self.names())})")

    def names(self) -> tuple[str, ...]:
        return tuple(engine.name for engine in self.engines)

    def candidates(self, device: str, backend: str = "auto", precision: str = "auto") -> list[Candidate]:
        """What a worker started with ``--backend`` and ``--precision`` may serve on ``device``: with both
        given, exactly that pair (if the engine offers it); with ``auto`` in either, what ``auto`` measures
        among the rest (a named precision, int8 included, where an engine offers it)."""
        found = []
        for engine in self.engines:
            if backend not in ("auto", engine.name):
                continue
            offered = engine.measured(device) if precision == "auto" else engine.offers(device)
            found += [Candidate(engine.name, p) for p in offered if precision in ("auto", p)]
        return found

    def load(self, candidate: Candidate, request: LoadRequest) -> Any:
        return self.engine(candidate.engine).load(request)


# -- the embedding engines: each loader imports its runtime only when called ----------------------------
def _on_cpu(*offered: str) -> Callable[[str], tuple[str, ...]]:
    return lambda device: offered if device == "cpu" else ()


def _openvino_measured(device: str) -> tuple[str, ...]:
    """OpenVINO computes in bf16 where the CPU has native bf16 (its default there), else in fp32."""
    if device != "cpu":
        return ()
    return ("bf16",) if precisions.cpu_has_fast_bf16() else ("fp32",)


def _openvino_explicit(device: str) -> tuple[str, ...]:
    return tuple(p for p in ("bf16", "fp32") if device == "cpu" and p not in _openvino_measured(device))


def _torch_measured(device: str) -> tuple[str, ...]:
    if device.startswith("cuda"):
        return ("fp16", "bf16", "fp32")
    if device != "cpu":  # mps: fp32 until measured there
        return ("fp32",)
    return ("fp32", *(("bf16",) if precisions.cpu_has_fast_bf16() else ()), "fp16w")


def _torch_explicit(device: str) -> tuple[str, ...]:
    return ("bf16",) if device == "cpu" and not precisions.cpu_has_fast_bf16() else ()


def _export(request: LoadRequest) -> None:
    from worker.onnx_backend import OnnxUnsupported, exported

    try:
        exported(request.path, request.emit, request.model_name)
    except OnnxUnsupported as exc:
        raise EngineUnsupported(str(exc)) from None


def _load_onnx(request: LoadRequest) -> Any:
    from worker.onnx_backend import OnnxUnsupported, prepare

    try:
        return prepare(request.path, request.model_id, request.emit, threads=request.threads.intra_op,
                       model_name=request.model_name, precision=request.precision)
    except OnnxUnsupported as exc:
        raise EngineUnsupported(str(exc)) from None


def _load_openvino(request: LoadRequest) -> Any:
    from worker.onnx_backend import OnnxUnsupported
    from worker.openvino_backend import prepare

    try:
        return prepare(request.path, request.model_id, request.model_name, request.precision, request.threads,
                       request.emit)
    except OnnxUnsupported as exc:
        raise EngineUnsupported(str(exc)) from None


def _load_torch(request: LoadRequest) -> Any:
    from worker.embedder import SentenceTransformerEmbedder

    threads = request.threads.intra_op if request.device == "cpu" else request.threads.intra_op or None
    return SentenceTransformerEmbedder(request.path, request.model_id, request.device, request.precision,
                                       threads or None)


EMBEDDERS = Registry("embedder", (
    Engine("onnx", _on_cpu("fp32"), _on_cpu("int8"), _load_onnx, _export),
    Engine("openvino", _openvino_measured, _openvino_explicit, _load_openvino, _export),
    Engine("torch", _torch_measured, _torch_explicit, _load_torch),
))
