"""The OpenVINO engine for CPU workers: the ONNX file the worker already exports (worker/onnx_backend.py), run
by Intel's runtime, without torch in the worker.

OpenVINO reads the ONNX file directly and compiles it for this CPU in a fraction of a second (nothing is
cached beyond the export). ``bf16`` asks it to compute in bf16 (``INFERENCE_PRECISION_HINT``), which it does on
native bf16 units (AVX512-BF16, AMX); ``fp32`` keeps every operation in f32. The tokenizer, the padding and the
pooling are the ONNX path's (:class:`worker.onnx_backend.PipelineEmbedder`).

Threads (worker/devices.py ``plan_threads``): the worker's compute threads each run a pass at once. With more
than one, the model is compiled twice over the one read model: for batches, with one stream per compute
thread (``NUM_STREAMS``, each thread its own infer request), so that a batch mix keeps every core busy; and
for a lone text (one text, nothing else in flight), with one stream on every core (``PERFORMANCE_HINT``
LATENCY), so that it uses every idle core. With one compute thread the latency compilation serves all.
``python bench/engines.py`` measures both against the other engines.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import numpy as np

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
        return OpenVinoEmbedder(pipeline, str(target / MODEL_FILE), model_id, precision, threads)

    return reload_once(load, path, emit, model_name)


class OpenVinoEmbedder(PipelineEmbedder):
    backend = "openvino"

    def __init__(self, pipeline: Pipeline, model_file: str, model_id: str, precision: str,
                 threads: ThreadPlan) -> None:
        import openvino as ov

        super().__init__(pipeline, model_id, precision)
        core = ov.Core()
        model = core.read_model(model_file)
        hint = PRECISION_HINTS[precision]
        self.lone = core.compile_model(model, "CPU", {
            "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads.cores,
            "INFERENCE_PRECISION_HINT": hint})
        self.batches = self.lone if threads.compute <= 1 else core.compile_model(model, "CPU", {
            "PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": threads.compute,
            "INFERENCE_NUM_THREADS": threads.compute * threads.intra_op, "INFERENCE_PRECISION_HINT": hint})
        computes_in = self.lone.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        if computes_in != hint:  # e.g. bf16 asked on a CPU that has no bf16: OpenVINO quietly uses f32
            raise OnnxUnsupported(f"OpenVINO computes in {computes_in} here, not {precision}")
        self.input_names = [port.get_any_name() for port in model.inputs]
        self.dim = int(model.outputs[0].get_partial_shape()[-1].get_length())
        self._lone_request = self.lone.create_infer_request()
        self._lone_lock = threading.Lock()  # the lone request takes one pass at a time
        self._lock = threading.Lock()
        self._in_flight = 0
        self._requests = threading.local()  # one infer request per compute thread: a request is not shared

    def token_embeddings(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        with self._lock:
            lone = self.batches is self.lone or (feeds["input_ids"].shape[0] == 1 and self._in_flight == 0)
            self._in_flight += 1
        try:
            if lone:
                with self._lone_lock:  # a copy: the next pass on this request overwrites its output
                    return np.array(self._lone_request.infer(feeds)[0])
            return self._request().infer(feeds)[0]  # this thread's own request: read before its next pass
        finally:
            with self._lock:
                self._in_flight -= 1

    def _request(self) -> Any:
        request = getattr(self._requests, "request", None)
        if request is None:
            request = self._requests.request = self.batches.create_infer_request()
        return request
