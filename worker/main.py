"""Entry point of one worker process: locate and load the model, warm it up, then serve the broker."""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from embed_common import lifeline, progress
from embed_common.exits import ExitCode
from worker import model_config
from worker.devices import ThreadPlan
from worker.embedder import Embedder
from worker.worker import WorkerLoop, WorkerSettings

log = logging.getLogger(__name__)



def run(settings: WorkerSettings) -> int:
    lifeline.watch_parent(settings.parent_pid)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    worker_id = settings.worker_id or f"{os.uname().nodename if hasattr(os, 'uname') else 'w'}-{os.getpid()}"

    def emit(event_type: str, data: dict[str, Any]) -> None:
        progress.emit(event_type, {**data, "worker": worker_id} if "worker" not in data else data)

    stop_requested = []

    def on_signal(signum: int, frame: object) -> None:
        lifeline.ignore_further_signals()  # a second one would kill it on its way out (exit -15)
        stop_requested.append(signum)
        if loop is not None:
            loop.stop()
        else:
            sys.exit(ExitCode.OK)  # still loading the model: nothing to finish

    loop: WorkerLoop | None = None
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    from worker.devices import plan_threads, resolve_device
    from worker.model_loading import ModelUnavailable, locate_model

    device = resolve_device(settings.device)
    threads = plan_threads(device, settings.compute_threads, settings.threads)
    started = time.monotonic()
    try:
        located = locate_model(settings.model, emit)
        embedder, cosine = load_embedder(settings, located.path, located.name, device, threads, emit)
    except ModelUnavailable as exc:  # not on disk and not downloadable: the reason says it all
        log.error("%s", exc)
        emit("worker_failed", {"error": "MODEL_LOAD_FAILED", "reason": str(exc)})
        return ExitCode.LOAD_FAILED
    except Exception as exc:
        log.exception("could not load model %s", settings.model)
        emit("worker_failed", {"error": "MODEL_LOAD_FAILED",
                               "reason": f"could not load {settings.model}: {type(exc).__name__}: {exc}"})
        return ExitCode.LOAD_FAILED
    info = {"model_name": located.name, **model_config.ready_info(located.path), "cosine": cosine}  # kind, prompts
    emit("model_loaded", {"model": located.name, "kind": info["kind"], "dimensions": embedder.dim, "device": device,
                          "precision": embedder.precision, "backend": embedder.backend, "cosine": cosine,
                          "compute_threads": threads.compute, "seconds": round(time.monotonic() - started, 2)})
    log.info("model %s loaded on %s (%s, %s, %s, %d compute threads of %d)", settings.model, device,
             embedder.backend, embedder.precision, embedder.precision_note or "no precision check",
             threads.compute, threads.intra_op)
    settings_with_id = WorkerSettings(**{**settings.__dict__, "worker_id": worker_id,
                                         "compute_threads": threads.compute, "threads": threads.intra_op})
    info["fingerprint"] = vectors_fingerprint(located.path, embedder)
    loop = WorkerLoop(settings_with_id, embedder, info, on_event=emit)
    if stop_requested:
        return ExitCode.OK
    code = loop.run()
    finish_compute(loop)
    return code


def vectors_fingerprint(path: str, embedder: Embedder) -> str:
    """What decides this worker's vectors besides the text and the job's options: the model's files (all of
    them, worker/cache.py weights_fingerprint), the backend and the number format. The front's vector cache keys
    on it (http_front/embed_cache.py); empty when the files cannot be read, and then nothing is cached."""
    from worker.cache import content_key, weights_fingerprint

    try:
        return content_key(weights_fingerprint(Path(path)), embedder.backend, embedder.precision)
    except OSError as exc:
        log.warning("model files not fingerprinted (its vectors will not be cached): %s", exc)
        return ""


def load_embedder(settings: WorkerSettings, path: str, name: str, device: str, threads: ThreadPlan,
                  emit: Any) -> tuple[Embedder, float | None]:
    """The engine and precision worker/engine_select.py selects (measured, or forced by ``--backend`` and
    ``--precision``), loaded through the registry; with the least cosine of its vectors to fp32
    sentence-transformers' on the check set (None where it could not be measured). A reranker
    (worker/model_config.py) is a CrossEncoder on torch (worker/cross_encoder.py), not measured."""
    if model_config.model_kind(path) == model_config.RERANK:
        return load_reranker(settings, path, device, name, threads, emit), None
    from worker.engine_select import select
    from worker.engines import EMBEDDERS, LoadRequest
    from worker.worker import default_token_budget

    request = LoadRequest(path, settings.model, name, device, settings.precision, threads, emit)
    budget = settings.token_budget or default_token_budget(device)
    selection = select(request, settings.backend, settings.precision, settings.min_cosine, budget)
    candidate = selection.candidate
    embedder = EMBEDDERS.load(candidate, dataclasses.replace(request, precision=candidate.precision))
    return embedder, selection.measurement.cosine if selection.measurement else None


def load_reranker(settings: WorkerSettings, path: str, device: str, name: str, threads: ThreadPlan,
                  emit: Any) -> Embedder:
    """ONNX Runtime where the backend is onnx, or auto on a CPU (worker/onnx_rerank.py), else torch; ``auto``
    falls back to torch and says why (``backend_fallback``), as for an embedding model."""
    if settings.backend in ("auto", "onnx") and device == "cpu" and settings.precision in ("auto", "fp32"):
        from worker.onnx_backend import OnnxUnsupported
        from worker.onnx_rerank import prepare

        try:
            return prepare(path, settings.model, emit, threads=threads.intra_op, model_name=name)
        except OnnxUnsupported as exc:
            if settings.backend == "onnx":
                raise
            log.warning("serving %s on torch: %s", name, exc)
            emit("backend_fallback", {"model": name, "backend": "torch", "reason": str(exc)})
    from worker.cross_encoder import CrossEncoderScorer

    return CrossEncoderScorer(path, settings.model, device, threads.intra_op or None)


def finish_compute(loop: WorkerLoop) -> None:
    """Wait for the compute thread (told to stop by loop.run) to leave torch before the interpreter exits:
    finalising it while that thread is still inside torch destroys torch's joinable C++ threads, and the
    process dies by SIGABRT ("terminate called without an active exception"). Should the batch outlast the
    grace (``lifeline.COMPUTE_GRACE``), leave without finalising (os._exit, after flushing what was printed)."""
    loop.compute.join(lifeline.COMPUTE_GRACE)  # the supervisor waits longer (embed_common/lifeline.py)
    if loop.compute.alive():
        log.warning("the batch being encoded did not finish within %.0fs: exiting without waiting for it",
                    lifeline.COMPUTE_GRACE)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(ExitCode.OK)
