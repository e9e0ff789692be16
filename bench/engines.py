"""The candidate engines side by side, measured the way a worker's ``auto`` measures them (worker/engine_select.py):

    python bench/engines.py [--model ID_OR_PATH] [--rounds N] [--compute-threads N] [--threads N] [--all]

Each candidate runs in its own child process (worker/engine_measure.py), their rounds interleaved, so that load
from elsewhere on the machine falls on all of them alike; nothing is read from or written to the worker's cache.
``--all`` adds what ``auto`` never picks but one may ask for (int8, OpenVINO fp32 where bf16 is native). Prints,
per candidate, the least cosine to fp32 sentence-transformers on the check set, a batch mix's texts/s, a lone
text's ms (the least of its passes), the measuring process's PSS, the score and the choice
(worker/engine_choice.py), with the CPU it ran on.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `python bench/engines.py` from anywhere

from bench.run import DEFAULT_MODEL, reference_path
from worker import engine_select
from worker.devices import plan_threads
from worker.engine_choice import MIN_COSINE, choose, weights_for
from worker.engines import EMBEDDERS, Candidate, LoadRequest
from worker.onnx_backend import exported
from worker.worker import default_token_budget


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def load_candidate(model: str, engine: str, precision: str = "auto") -> Any:
    """``model`` on ``engine`` on this CPU as a worker loads it, on every core of a worker's share; ``auto``: the
    precision a worker measures that engine at here (worker/engines.py, e.g. OpenVINO's bf16 where the CPU has
    native bf16, else fp32)."""
    path = reference_path(model)
    spec = EMBEDDERS.engine(engine)
    chosen = spec.measured("cpu")[0] if precision == "auto" else precision
    request = LoadRequest(path, model, Path(path).name, "cpu", chosen, plan_threads("cpu"), lambda kind, data: None)
    if spec.prepare is not None:
        spec.prepare(request)
    return EMBEDDERS.load(Candidate(engine, chosen), request)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, help="model id or local path (default: the bundled one)")
    parser.add_argument("--rounds", type=int, default=engine_select.ROUNDS, help="interleaved rounds")
    parser.add_argument("--compute-threads", type=int, default=0, help="as the worker's flag (0: by the cores)")
    parser.add_argument("--threads", type=int, default=0, help="as the worker's flag (0: by the cores)")
    parser.add_argument("--all", action="store_true", help="also the explicit-only candidates")
    parser.add_argument("--min-cosine", type=float, default=MIN_COSINE)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = reference_path(args.model)
    threads = plan_threads("cpu", args.compute_threads, args.threads)
    request = LoadRequest(path, args.model, Path(path).name, "cpu", "auto", threads, lambda kind, data: None)
    candidates = EMBEDDERS.candidates("cpu")
    if args.all:
        candidates += [c for c in EMBEDDERS.candidates("cpu", precision="int8")]
        candidates += [c for e in EMBEDDERS.engines for p in e.explicit("cpu") if p != "int8"
                       for c in EMBEDDERS.candidates("cpu", e.name, p)]
    exported(path, lambda kind, data: None, request.model_name)
    engine_select.ROUNDS = args.rounds
    with tempfile.TemporaryDirectory(prefix="bench-engines-") as tmp:
        measured = engine_select.measure_in_children(request, default_token_budget("cpu"), candidates,
                                                     Path(tmp) / "reference.npy")
    ms = list(measured.values())
    choice = choose([m for m in ms if not m.name.endswith("int8")], args.min_cosine, weights_for("cpu"))
    print(f"CPU: {cpu_name()}, {os.cpu_count()} logical CPUs; model {args.model}; threads: {threads.compute} "
          f"compute x {threads.intra_op} (a lone text: {threads.cores}); {args.rounds} interleaved rounds")
    print(f"{'candidate':<16} {'cosine':>10} {'texts/s':>9} {'lone ms':>8} {'PSS MB':>7} {'score':>6}  note")
    for m in ms:
        note = "CHOSEN" if choice.chosen is m else (m.error or choice.rejected.get(m.name, ""))
        if m.name.endswith("int8"):
            note = note or "explicit only"
        score = choice.scores.get(m.name)
        print(f"{m.name:<16} {m.cosine:>10.7f} {m.texts_per_s:>9.1f} {m.lone_ms:>8.2f} {m.memory_mb:>7.0f} "
              f"{'' if score is None else f'{score:.3f}':>6}  {note}")
    results = Path(__file__).resolve().parent / "results"
    results.mkdir(exist_ok=True)
    out = results / "engines.json"
    out.write_text(json.dumps({"cpu": cpu_name(), "model": args.model, "measurements": [m.__dict__ for m in ms],
                               "chosen": choice.chosen.name if choice.chosen else None}, indent=1))
    print(f"(written to {out})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
