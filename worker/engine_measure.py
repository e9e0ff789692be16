"""Measure one candidate engine, in a child process of the worker: ``python -m worker.engine_measure SPEC``.

Run by worker/engine_select.py once per candidate (and once for the reference), so that each measurement
runs in a bare process: its memory is what a worker serving that engine holds, and the serving worker imports
only the engine it chose. ``SPEC`` is a JSON file (:func:`spec`).

- the reference (no engine in the spec): sentence-transformers fp32 (``SentenceTransformer.encode``) on the
  check set (:data:`CHECK_TEXTS`), written as a ``.npy`` file: what every candidate is compared with.
- a candidate: loaded through the registry (worker/engines.py) exactly as a worker loads it, with the worker's
  thread plan, and checked: the least cosine to the reference over the check set, encoded one text at a time
  and in padded batches within the worker's token budget (a bigger batch than served would also leave the
  memory of a bigger shape than served in the figure). It then answers the parent, a line each
  (``MEASURE:{json}`` on stdout), so that the parent can interleave the candidates' rounds and a moment of load
  from elsewhere on the machine falls on all of them alike:
  - ``batch``: one round of :data:`WORKLOAD`'s texts, sorted by length and cut into batches within the worker's
    token budget, encoded on as many threads at once as the worker has compute threads; texts a second;
  - ``lone``: one text of about a hundred tokens, several passes one at a time, nothing else running; the
    least time of them;
  - ``end``: its memory (the process's PSS after those runs), then it exits.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from embed_common import lifeline
from embed_common.exits import ExitCode
from worker import heap
from worker.devices import ThreadPlan
from worker.embedder import PROBE_TEXTS, cosines
from worker.engines import EMBEDDERS, Candidate, LoadRequest

log = logging.getLogger(__name__)

_PARAGRAPH = (
    "Text embeddings map sentences to vectors so that texts of similar meaning lie close together. A search "
    "engine compares the vector of a query with the vectors of many passages and returns the nearest ones. "
    "Les modèles multilingues placent une phrase et sa traduction au même endroit. Ein Satz auf Deutsch, mit "
    "Kommas, Zahlen wie 3,14 und 2026, und einem Nebensatz, der etwas länger ist. 短い日本語の文もあります。 "
)
_WORDS = (_PARAGRAPH * 8).split()


def _text(words: int, start: int = 0) -> str:
    return " ".join(_WORDS[start: start + words])


# The fidelity check set: short and long, several languages, an empty text; fixed (it is part of the cache key).
CHECK_TEXTS = [*PROBE_TEXTS, _text(40, 3), _text(120, 7), _text(300, 1)]
# The batch mix: mostly short texts, some passages, a few long ones; fixed.
WORKLOAD = [_text(n, i) for i, n in enumerate([4, 6, 8, 10, 12] * 4 + [24, 32, 48] * 4 + [80, 120, 180] * 2)]
LONE_TEXT = _text(70, 5)  # about a hundred tokens
LONE_PASSES = 11
CHECK_VERSION = "4"  # bump when the check set, the workload or the way they are measured changes


def spec(candidate: Candidate | None, path: str, model_id: str, device: str, threads: ThreadPlan,
         reference: Path, token_budget: int) -> dict[str, Any]:
    """What the child is asked: a candidate to measure against ``reference``, or (None) to write it."""
    return {"engine": candidate.engine if candidate else None, "precision": candidate.precision if candidate
            else None, "path": path, "model_id": model_id, "device": device, "reference": str(reference),
            "threads": [threads.compute, threads.intra_op, threads.cores], "token_budget": token_budget}


def write_reference(path: str, out: Path) -> None:
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(path, device="cpu")
    model.eval()
    with torch.inference_mode():
        vectors = model.encode(CHECK_TEXTS, convert_to_numpy=True, normalize_embeddings=False, batch_size=64)
    partial = out.with_name(f".{out.name}.{os.getpid()}.npy")
    np.save(partial, vectors.astype(np.float32))
    os.replace(partial, out)


PREFIX = "MEASURE:"


def load_and_check(request: dict[str, Any]) -> tuple[Any, float]:
    """The candidate loaded as a worker loads it, and its least cosine to the reference on the check set."""
    candidate = Candidate(request["engine"], request["precision"])
    threads = ThreadPlan(*request["threads"])
    load = LoadRequest(request["path"], request["model_id"], request["model_id"], request["device"],
                       candidate.precision, threads, lambda kind, data: None)
    embedder = EMBEDDERS.load(candidate, load)
    if embedder.precision != candidate.precision:  # an engine that put on another precision than asked
        raise RuntimeError(f"it runs {embedder.precision}: {embedder.precision_note}")
    reference = np.load(request["reference"])
    ids = embedder.tokenize(CHECK_TEXTS).ids
    one_by_one = np.stack([embedder.encode_ids([seq])[0] for seq in ids])
    padded = np.zeros_like(one_by_one)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    for batch in cut(order, [len(ids[i]) for i in order], request["token_budget"]):  # batches as served
        padded[batch] = embedder.encode_ids([ids[i] for i in batch])
    cosine = float(min(cosines(reference, one_by_one).min(), cosines(reference, padded).min()))
    return embedder, round(cosine, 7)


def answer(**data: Any) -> None:
    sys.stdout.write(PREFIX + json.dumps(data) + "\n")
    sys.stdout.flush()


def converse(request: dict[str, Any]) -> None:
    """Load and check the candidate, say so, then answer the parent's requests until ``end``."""
    try:
        embedder, cosine = load_and_check(request)
        planned = batches(embedder, request["token_budget"])
        batch_rate(embedder, planned, request["threads"][0])  # warm-up: first-pass allocations, compilation
        lone_ms(embedder)
    except Exception as exc:  # a candidate that cannot load or run here: measured as failed, never chosen
        log.warning("%s/%s failed: %s: %s", request["engine"], request["precision"], type(exc).__name__, exc)
        answer(error=f"{type(exc).__name__}: {exc}"[:300])
        return
    answer(cosine=cosine)
    for line in sys.stdin:
        command = line.strip()
        if command == "batch":
            answer(texts_per_s=batch_rate(embedder, planned, request["threads"][0]))
        elif command == "lone":
            answer(lone_ms=lone_ms(embedder))
        elif command == "end":
            heap.trimmer()()
            answer(memory_mb=pss_mb())
            return


def cut(items: list[Any], lengths: list[int], token_budget: int) -> list[list[Any]]:
    """Items in order (sorted by length, ascending) cut into batches of at most ``token_budget`` padded tokens
    (a longer item alone), as the worker's planner bounds a batch."""
    out: list[list[Any]] = [[]]
    for item, length in zip(items, lengths, strict=True):
        if out[-1] and (len(out[-1]) + 1) * length > token_budget:
            out.append([])
        out[-1].append(item)
    return out


def batches(embedder: Any, token_budget: int) -> list[list[list[int]]]:
    """The workload sorted by length and cut into batches within ``token_budget``."""
    ids = sorted(embedder.tokenize(WORKLOAD).ids, key=len)
    return cut(ids, [len(seq) for seq in ids], token_budget)


def batch_rate(embedder: Any, planned: list[list[list[int]]], compute: int) -> float:
    """Texts a second over one round of the planned batches, taken in turn by ``compute`` threads at once."""
    queue = list(planned)  # pop() takes the longest batches first, as the worker's planner hands them out
    lock = threading.Lock()

    def work() -> None:
        while True:
            with lock:
                if not queue:
                    return
                batch = queue.pop()
            embedder.encode_ids(batch)

    started = time.perf_counter()
    runners = [threading.Thread(target=work, name=f"measure-{i}") for i in range(max(1, compute))]
    for runner in runners:
        runner.start()
    for runner in runners:
        runner.join()
    return len(WORKLOAD) / (time.perf_counter() - started)


def lone_ms(embedder: Any) -> float:
    ids = embedder.tokenize([LONE_TEXT]).ids
    for _ in range(2):
        embedder.encode_ids(ids)
    passes = []
    for _ in range(LONE_PASSES):
        started = time.perf_counter()
        embedder.encode_ids(ids)
        passes.append((time.perf_counter() - started) * 1000)
    return min(passes)


def pss_mb() -> float:
    """This process's proportional set size (Linux), else its peak resident size."""
    try:
        with open("/proc/self/smaps_rollup", encoding="utf-8") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("Pss:")) / 1024
    except (OSError, StopIteration):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / (2**20 if sys.platform == "darwin" else 1024)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m worker.engine_measure SPEC.json", file=sys.stderr)
        return ExitCode.USAGE
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    lifeline.watch_parent(os.getppid())  # a worker killed mid-measurement takes its child with it
    request = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    if request["engine"] is None:
        write_reference(request["path"], Path(request["reference"]))
    else:
        converse(request)
    return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
