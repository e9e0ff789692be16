"""The OpenVINO engine for CPU workers: the ONNX file the worker already exports (worker/onnx_backend.py), run
by Intel's runtime, without torch in the worker.

OpenVINO reads the ONNX file directly and compiles it for this CPU in a fraction of a second. ``fp32`` keeps
every operation in f32 on that file. ``bf16`` asks it to compute in bf16 (``INFERENCE_PRECISION_HINT``), which
it does on native bf16 units (AVX512-BF16, AMX), from a copy of the model with its weights stored in fp16
(:func:`compressed`, made once beside the export): the plugin then holds no fp32 weights beside its bf16 ones,
about half the engine's memory, and the vectors still pass the fidelity check (bf16 arithmetic rounds weights
further than fp16 storage does). `python bench/engines.py --all` prints each candidate's memory and cosine.
The tokenizer, the padding and the pooling are the ONNX path's (:class:`worker.onnx_backend.PipelineEmbedder`).

Memory: the plugin keeps the buffers of the largest batch it has run. :meth:`OpenVinoEmbedder.release_memory`
gives them back; the worker calls it once idle after a large batch (worker/worker.py ``ComputeThreads``).

Threads: two compilations of one model. A pass that runs alone (a lone query, the last batch of a load) goes
to the *latency* one: one request on every core of the worker's share (``PERFORMANCE_HINT`` LATENCY, ``cores``
of worker/devices.py ``plan_threads``). Passes that run beside each other go to the *busy* one
(:meth:`OpenVinoEmbedder.encode_ids_beside`): one stream, on its own cores, per compute thread, so no pass
waits at every layer for a core that the front, the broker, the client or the other pass is using. The two
never share the cores (:class:`PassGate`). Against one request that every pass takes in turn, this serves
many concurrent clients faster and a lone text as fast, for more memory under load (the busy compilation's
buffers, one set a stream); `python bench/streams.py` measures both ways side by side.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from worker.cache import package_version
from worker.devices import ThreadPlan
from worker.onnx_backend import (
    MODEL_FILE,
    Emit,
    OnnxUnsupported,
    Pipeline,
    PipelineEmbedder,
    exported,
    reload_once,
)

log = logging.getLogger(__name__)

PRECISION_HINTS = {"bf16": "bf16", "fp32": "f32"}
# The plugin prepares its kernels for each input shape it meets the first time (a lone text of a width not seen
# before costs several ms more): widths are rounded up to a multiple of this, so that texts of nearby lengths
# share a shape. `python bench/widths.py` measures a lone text's first sight and its repeat at each step.
WIDTH_STEP = 16


def prepare(path: str, model_id: str, model_name: str, precision: str, threads: ThreadPlan,
            emit: Emit) -> OpenVinoEmbedder:
    """An :class:`OpenVinoEmbedder` for the model at ``path``, exporting it first unless the cache holds it."""
    try:
        import openvino  # noqa: F401
    except ImportError as exc:
        raise OnnxUnsupported(f"openvino is not installed ({exc})") from None
    if precision not in PRECISION_HINTS:
        raise OnnxUnsupported(f"OpenVINO serves {' or '.join(PRECISION_HINTS)}, not {precision}")

    def load() -> OpenVinoEmbedder:
        pipeline, target = exported(path, emit, model_name)
        model_file = target / MODEL_FILE if precision == "fp32" else compressed(target)
        return OpenVinoEmbedder(pipeline, str(model_file), model_id, precision, threads)

    return reload_once(load, path, emit, model_name)


def compressed(target: Path) -> Path:
    """The export as an OpenVINO model with its weights stored in fp16, made once beside the export (keyed by
    OpenVINO's version: its format is the runtime's own), atomically: a crash mid-save leaves no half copy."""
    import openvino as ov

    out_dir = target / f"openvino-{package_version('openvino')}-fp16"
    out = out_dir / "model.xml"
    if not out.is_file():
        partial = target / f".{out_dir.name}.{os.getpid()}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        try:
            ov.save_model(ov.Core().read_model(str(target / MODEL_FILE)), str(partial / "model.xml"),
                          compress_to_fp16=True)
            os.replace(partial, out_dir)
        except OSError:  # another worker saved the same copy first: keep its copy
            if not out.is_file():
                raise
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    return out


class OpenVinoEmbedder(PipelineEmbedder):
    backend = "openvino"
    width_step = WIDTH_STEP

    def __init__(self, pipeline: Pipeline, model_file: str, model_id: str, precision: str,
                 threads: ThreadPlan) -> None:
        import openvino as ov

        super().__init__(pipeline, model_id, precision)
        core = ov.Core()
        model = core.read_model(model_file)
        hint = PRECISION_HINTS[precision]
        self.compiled = core.compile_model(model, "CPU", {
            "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads.cores,
            "INFERENCE_PRECISION_HINT": hint})
        computes_in = self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        if computes_in != hint:  # e.g. bf16 asked on a CPU that has no bf16: OpenVINO quietly uses f32
            raise OnnxUnsupported(f"OpenVINO computes in {computes_in} here, not {precision}")
        self.busy = None  # with one compute thread no pass runs beside another
        if threads.compute > 1:
            self.busy = core.compile_model(model, "CPU", {
                "PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": threads.compute,
                "INFERENCE_NUM_THREADS": threads.compute * threads.intra_op, "INFERENCE_PRECISION_HINT": hint})
        self.input_names = [port.get_any_name() for port in model.inputs]
        self.dim = int(model.outputs[0].get_partial_shape()[-1].get_length())
        self._request = self.compiled.create_infer_request()
        self._streams = threading.local()  # each compute thread's request on the busy compilation
        self._gate = PassGate()
        self.passes = {"alone": 0, "beside": 0}  # for the tests

    def release_memory(self) -> None:
        """Give back the buffers the largest batches so far left in the plugin (the next pass allocates again)."""
        with self._gate.alone():
            self.compiled.release_memory()
            if self.busy is not None:
                self.busy.release_memory()

    def token_embeddings(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """A pass on every core, once no other pass runs."""
        with self._gate.alone():  # a copy: the next pass on this request overwrites its output
            self.passes["alone"] += 1
            return np.array(self._request.infer(feeds)[0])

    def encode_ids_beside(self, ids: list[list[int]]) -> np.ndarray:
        """:meth:`encode_ids` for a batch that runs beside others: on this thread's stream, one core."""
        if self.busy is None:
            return self.encode_ids(ids)
        return self.encode_with(ids, self._pass_beside)

    def _pass_beside(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        assert self.busy is not None
        with self._gate.beside():
            self.passes["beside"] += 1
            request = getattr(self._streams, "request", None)
            if request is None:
                request = self._streams.request = self.busy.create_infer_request()
            return np.array(request.infer(feeds)[0])


class PassGate:
    """Passes that hold every core (:meth:`alone`: one at a time, none beside it) and passes that each hold one
    (:meth:`beside`: any number at once, while no pass holds them all). A waiting pass alone is not starved: the
    worker sends a pass alone only when no other is taken (worker/worker.py ``ComputeThreads``)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._alone = False
        self._beside = 0

    @contextmanager
    def alone(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._alone and not self._beside)
            self._alone = True
        try:
            yield
        finally:
            with self._cond:
                self._alone = False
                self._cond.notify_all()

    @contextmanager
    def beside(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._alone)
            self._beside += 1
        try:
            yield
        finally:
            with self._cond:
                self._beside -= 1
                self._cond.notify_all()
