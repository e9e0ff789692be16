"""Entry point of one worker process: locate and load the model, warm it up, then serve the broker."""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from typing import Any

from embed_common import lifeline, progress
from worker.worker import WorkerLoop, WorkerSettings

log = logging.getLogger(__name__)

EXIT_REFUSED = 3  # the broker refused this worker (another model): restarting will not help
EXIT_LOAD_FAILED = 4


def run(settings: WorkerSettings) -> int:
    lifeline.watch_parent(settings.parent_pid)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    worker_id = settings.worker_id or f"{os.uname().nodename if hasattr(os, 'uname') else 'w'}-{os.getpid()}"

    def emit(event_type: str, data: dict[str, Any]) -> None:
        progress.emit(event_type, {**data, "worker": worker_id} if "worker" not in data else data)

    stop_requested = []

    def on_signal(signum: int, frame: object) -> None:
        stop_requested.append(signum)
        if loop is not None:
            loop.stop()
        else:
            sys.exit(0)  # still loading the model: nothing to finish

    loop: WorkerLoop | None = None
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    from worker.devices import physical_cores, resolve_device
    from worker.model_loading import ModelUnavailable, locate_model

    device = resolve_device(settings.device)
    started = time.monotonic()
    try:
        located = locate_model(settings.model, emit)
        from worker.embedder import SentenceTransformerEmbedder

        threads = settings.threads or (physical_cores() if device == "cpu" else 0)
        embedder = SentenceTransformerEmbedder(located.path, settings.model, device, settings.precision,
                                               threads or None)
    except ModelUnavailable as exc:  # not on disk and not downloadable: the reason says it all
        log.error("%s", exc)
        emit("worker_failed", {"error": "MODEL_LOAD_FAILED", "reason": str(exc)})
        return EXIT_LOAD_FAILED
    except Exception as exc:
        log.exception("could not load model %s", settings.model)
        emit("worker_failed", {"error": "MODEL_LOAD_FAILED",
                               "reason": f"could not load {settings.model}: {type(exc).__name__}: {exc}"})
        return EXIT_LOAD_FAILED
    emit("model_loaded", {"model": located.name, "dimensions": embedder.dim, "device": device,
                          "precision": embedder.precision, "seconds": round(time.monotonic() - started, 2)})
    log.info("model %s loaded on %s (%s, %s)", settings.model, device, embedder.precision,
             embedder.precision_note or "no precision check")
    settings_with_id = WorkerSettings(**{**settings.__dict__, "worker_id": worker_id})
    loop = WorkerLoop(settings_with_id, embedder, {"model_name": located.name}, on_event=emit)
    if stop_requested:
        return 0
    code = loop.run()
    return EXIT_REFUSED if code == 3 else code
