"""Which engine and precision a worker serves on: measured on this machine once, then read from the cache.

:func:`select` takes the candidates the registry offers for ``--backend`` and ``--precision`` on the device
(worker/engines.py ``Registry.candidates``: every one ``auto`` measures, or the one that was forced), runs
each engine's preparation (the ONNX export), measures every candidate the cache does not hold, each in its
own child process (worker/engine_measure.py, their rounds interleaved), and chooses by
:func:`worker.engine_choice.choose`. A forced pair is served whatever its measurement says (its cosine is
reported); under ``auto`` a candidate that fails the fidelity check is never chosen, and where none passes the
worker does not start.

Each measurement is cached on its own (``$XDG_CACHE_HOME/embed-cluster/engine/``), keyed by
:func:`measurement_key`: the model's files, the candidate, the device (the CPU's model name and flags, its
cores), the thread plan, the packages' versions and the check set's version. A first start says in PROGRESS
what it measures (``engine_measuring``, then ``engine_measured`` for each candidate); every start says what
it chose (``engine_chosen``, with the figures and whether they were measured now or read).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker import engine_measure
from worker.cache import cache_root, content_key, model_fingerprint, package_version
from worker.devices import ThreadPlan, physical_cores
from worker.engine_choice import Choice, Measurement, choose, weights_for
from worker.engines import EMBEDDERS, Candidate, EngineUnsupported, LoadRequest, Registry

log = logging.getLogger(__name__)

MEASURE_TIMEOUT = 600.0  # seconds for one measuring child (a 768-dim model in fp32 on 2 cores is the slowest)
# the packages whose versions decide the figures, embed-cluster's own first: an upgrade of the engines' code
# measures again rather than keep what its older code measured (the reference vectors: PACKAGES[1:4])
PACKAGES = ("embed-cluster", "torch", "sentence-transformers", "transformers", "onnxruntime", "openvino",
            "tokenizers", "numpy")

Measure = Callable[[list[Candidate], Path], dict[Candidate, Measurement]]


@dataclass(frozen=True)
class Selection:
    candidate: Candidate
    measurement: Measurement | None  # None: a forced pair whose measurement failed (it is served anyway)
    forced: bool


def select(request: LoadRequest, backend: str, precision: str, min_cosine: float, token_budget: int,
           registry: Registry = EMBEDDERS, measure: Measure | None = None) -> Selection:
    """The candidate to serve (see the module's doc). ``request`` is the worker's load request (its precision
    is ignored); ``measure`` takes the candidates' measurements (default: :func:`measure_in_children`)."""
    forced = backend != "auto" and precision != "auto"
    candidates = registry.candidates(request.device, backend, precision)
    if not candidates:
        raise EngineUnsupported(f"no engine offers {precision} on {request.device}" if backend == "auto" else
                                f"{backend} does not offer {precision} on {request.device}")
    candidates = prepared(candidates, request, registry, insist=backend != "auto")
    measure = measure or functools.partial(measure_in_children, request, token_budget)
    known, fresh = {}, []
    for candidate in candidates:
        cached = read_cached(cache_file(request, candidate, token_budget))
        if cached is not None:
            known[candidate] = cached
        else:
            fresh.append(candidate)
    started = time.monotonic()
    if fresh:
        request.emit("engine_measuring", {"model": request.model_name, "candidates": [str(c) for c in fresh],
                                          "cached": [str(c) for c in known]})
        for candidate, measured in measure(fresh, reference_file(request)).items():
            known[candidate] = measured
            if not measured.error.startswith("measuring failed"):  # a crashed child is measured again next time
                write_cached(cache_file(request, candidate, token_budget), measured)
            request.emit("engine_measured", {"model": request.model_name, **measured.__dict__})
    measurements = [known[c] for c in candidates]
    choice = choose(measurements, min_cosine, weights_for(request.device))
    if forced or (backend != "auto" and len(candidates) == 1):  # the one pair asked for: served
        chosen = candidates[0]
        m = known[chosen]
        if m.error or m.cosine < min_cosine:
            log.warning("%s is forced: serving it although %s", chosen, m.error or f"its cosine is {m.cosine}")
        selection = Selection(chosen, None if m.error else m, True)
    elif choice.chosen is None:
        raise EngineUnsupported(choice.reason())
    else:
        selection = Selection(Candidate(choice.chosen.engine, choice.chosen.precision), choice.chosen, False)
    announce(request, selection, choice, measured_now=bool(fresh), seconds=time.monotonic() - started,
             min_cosine=min_cosine)
    return selection


def prepared(candidates: list[Candidate], request: LoadRequest, registry: Registry,
             insist: bool) -> list[Candidate]:
    """The candidates whose engine's preparation (the ONNX export) succeeds; under ``auto`` the others are
    dropped and the worker says why (``backend_fallback``), a forced engine's failure fails the load."""
    kept, done = [], {}
    for candidate in candidates:
        engine = registry.engine(candidate.engine)
        if engine.prepare is not None and engine.prepare not in done:
            try:
                engine.prepare(request)
                done[engine.prepare] = ""
            except EngineUnsupported as exc:
                if insist:
                    raise
                done[engine.prepare] = str(exc)
        if engine.prepare is not None and done[engine.prepare]:
            continue
        kept.append(candidate)
    dropped = sorted({c.engine for c in candidates} - {c.engine for c in kept})
    if dropped:
        reason = next(why for why in done.values() if why)
        log.warning("%s cannot serve %s: %s", ", ".join(dropped), request.model_name, reason)
        request.emit("backend_fallback", {"model": request.model_name, "backend": kept[0].engine if kept else None,
                                          "dropped": dropped, "reason": reason})
    if not kept:
        raise EngineUnsupported(next(why for why in done.values() if why))
    return kept


def announce(request: LoadRequest, selection: Selection, choice: Choice, measured_now: bool, seconds: float,
             min_cosine: float) -> None:
    m = selection.measurement
    figures = {k: v for k, v in (m.__dict__ if m else {}).items() if k not in ("engine", "precision", "error")}
    data = {"model": request.model_name, "engine": selection.candidate.engine,
            "precision": selection.candidate.precision, **figures, "forced": selection.forced,
            "measured": measured_now, "seconds": round(seconds, 2), "min_cosine": min_cosine,
            "rejected": choice.rejected}
    request.emit("engine_chosen", data)
    log.info("engine %s (%s): %s", selection.candidate, "forced" if selection.forced else choice.reason(),
             ", ".join(f"{k} {v}" for k, v in figures.items()))


# -- measuring in children ------------------------------------------------------------------------------
ROUNDS = 3  # interleaved rounds of each figure; the best of each is kept


class Child:
    """One candidate's measuring process (worker/engine_measure.py), spoken to a line at a time."""

    def __init__(self, spec_file: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "worker.engine_measure", str(spec_file)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, bufsize=1, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})

    def ask(self, command: str | None = None) -> dict[str, Any]:
        """Send ``command`` (None: only read) and read the answer; a child that dies or says nothing fails."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        if command is not None:
            self.proc.stdin.write(command + "\n")
            self.proc.stdin.flush()
        for line in self.proc.stdout:
            if line.startswith(engine_measure.PREFIX):
                return dict(json.loads(line[len(engine_measure.PREFIX):]))
        self.proc.wait(timeout=MEASURE_TIMEOUT)
        last = (self.proc.stderr.read().strip().splitlines() if self.proc.stderr else []) or [
            f"exit {self.proc.returncode}"]
        raise RuntimeError(last[-1])

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            if self.proc.stdin:
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream:
                stream.close()


def measure_in_children(request: LoadRequest, token_budget: int, candidates: list[Candidate],
                        reference: Path) -> dict[Candidate, Measurement]:
    """Every candidate measured by its own ``python -m worker.engine_measure`` (the reference written first
    where the cache has none). Each child loads and checks its candidate; then the parent asks each in turn for
    a round of each figure, :data:`ROUNDS` times, so that load from elsewhere on the machine falls on all of
    them alike, and keeps the best of each. A child that fails is a failed measurement, never chosen; one that
    crashes or hangs reads "measuring failed" (not cached: measured again at the next start)."""
    results: dict[Candidate, Measurement] = {}
    with tempfile.TemporaryDirectory(prefix="embed-measure-") as tmp:
        def spec_file(candidate: Candidate | None, name: str) -> Path:
            file = Path(tmp) / f"{name}.json"
            file.write_text(json.dumps(engine_measure.spec(candidate, request.path, request.model_id,
                                                           request.device, request.threads, reference,
                                                           token_budget)), encoding="utf-8")
            return file

        if not reference.is_file():
            reference.parent.mkdir(parents=True, exist_ok=True)
            proc = subprocess.run([sys.executable, "-m", "worker.engine_measure", str(spec_file(None, "ref"))],
                                  capture_output=True, text=True, timeout=MEASURE_TIMEOUT, check=False)
            if proc.returncode != 0:
                reason = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
                failed = f"measuring failed: the reference: {reason}"[:300]
                return {c: Measurement(c.engine, c.precision, error=failed) for c in candidates}
        children: dict[Candidate, Child] = {}
        figures: dict[Candidate, dict[str, Any]] = {}
        try:
            for i, candidate in enumerate(candidates):  # one at a time: each loads and warms up alone
                child = Child(spec_file(candidate, str(i)))
                try:
                    ready = child.ask()
                except (RuntimeError, OSError, ValueError) as exc:
                    child.close()
                    results[candidate] = Measurement(candidate.engine, candidate.precision,
                                                     error=f"measuring failed: {exc}"[:300])
                    continue
                if ready.get("error"):
                    child.close()
                    results[candidate] = Measurement(candidate.engine, candidate.precision, error=ready["error"])
                    continue
                children[candidate], figures[candidate] = child, {"cosine": ready["cosine"], "texts_per_s": 0.0,
                                                                  "lone_ms": float("inf")}
            for _ in range(ROUNDS):
                for command, key, better in (("batch", "texts_per_s", max), ("lone", "lone_ms", min)):
                    for candidate, child in list(children.items()):
                        try:
                            value = child.ask(command)[key]
                        except (RuntimeError, OSError, ValueError, KeyError) as exc:
                            child.close()
                            del children[candidate]
                            results[candidate] = Measurement(candidate.engine, candidate.precision,
                                                             error=f"measuring failed: {exc}"[:300])
                            continue
                        figures[candidate][key] = better(figures[candidate][key], value)
            for candidate, child in children.items():
                try:
                    memory = float(child.ask("end").get("memory_mb", 0.0))
                except (RuntimeError, OSError, ValueError):
                    memory = 0.0
                f = figures[candidate]
                results[candidate] = Measurement(candidate.engine, candidate.precision, cosine=f["cosine"],
                                                 texts_per_s=round(f["texts_per_s"], 1),
                                                 lone_ms=round(f["lone_ms"], 2), memory_mb=round(memory, 1))
        finally:
            for child in children.values():
                child.close()
    return {c: results[c] for c in candidates}


# -- the cache --------------------------------------------------------------------------------------------
@functools.cache
def machine_key(device: str) -> str:
    """What the timings depend on besides the model and the candidate: the CPU (model name, flags, cores), the
    GPU where there is one (the driver's description), and the packages' versions."""
    cpu_lines = []
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith(("model name", "flags")):
                cpu_lines.append(line.strip())
                if len(cpu_lines) == 2:
                    break
    gpu = ""
    if device.startswith("cuda"):
        with contextlib.suppress(OSError, IndexError):
            gpus = sorted(Path("/proc/driver/nvidia/gpus").iterdir())
            gpu = (gpus[int(device.partition(":")[2] or 0)] / "information").read_text(encoding="utf-8")
    return content_key(*cpu_lines, str(physical_cores()), str(os.cpu_count()), device, gpu,
                       *(package_version(p) for p in PACKAGES), sys.version.split()[0])


@functools.cache
def _fingerprint(path: str) -> str:
    return model_fingerprint(Path(path))


def measurement_key(request: LoadRequest, candidate: Candidate, token_budget: int) -> str:
    threads: ThreadPlan = request.threads
    return content_key(_fingerprint(request.path), str(candidate), machine_key(request.device),
                       f"{threads.compute}/{threads.intra_op}/{threads.cores}", str(token_budget),
                       engine_measure.CHECK_VERSION)


def cache_file(request: LoadRequest, candidate: Candidate, token_budget: int) -> Path:
    return cache_root("engine") / f"{measurement_key(request, candidate, token_budget)}.json"


def reference_file(request: LoadRequest) -> Path:
    """sentence-transformers fp32's vectors of the check set for this model and these packages."""
    key = content_key(_fingerprint(request.path), *(package_version(p) for p in PACKAGES[1:4]),
                      engine_measure.CHECK_VERSION)
    return cache_root("engine") / f"reference-{key}.npy"


def read_cached(file: Path) -> Measurement | None:
    try:
        return Measurement(**json.loads(file.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None


def write_cached(file: Path, measurement: Measurement) -> None:
    """Atomically (a temporary file renamed over it); a read-only cache is no error."""
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        partial = file.with_name(f".{file.name}.{os.getpid()}")
        partial.write_text(json.dumps(measurement.__dict__), encoding="utf-8")
        os.replace(partial, file)
    except OSError as exc:
        log.info("measurement not cached: %s", exc)
