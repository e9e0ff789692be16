"""A lone text on OpenVINO, the first time its width is met and again, at each width step (worker/onnx_backend.py
``padded_width``; the worker uses worker/openvino_backend.py ``WIDTH_STEP``):

    python bench/widths.py [--steps 1,8,16,32] [--texts 40] [--rounds 3] [--model ID_OR_PATH]

The plugin prepares its kernels per input shape, so a text of a width it has not run yet costs more than one of
a width it has. Each (round, step) runs in a fresh child process (the steps' order turned each round, so the
machine's drift falls on all of them): the long texts of bench/peers.py's lone-text row one at a time, each
once ("first", as a client sends them), then all again ("again"). Prints the p50 and mean ms of each, per step,
over every round, with the CPU and the precision (the one a worker measures OpenVINO at here: bf16 where the
CPU has native bf16, else fp32).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `python bench/widths.py` from anywhere

from bench.engines import cpu_name, load_candidate
from bench.peers import long_texts
from bench.run import DEFAULT_MODEL


def child(model: str, step: int, n: int) -> dict[str, object]:
    """One fresh engine at ``step``: each of ``n`` long texts' ms, first and again."""
    from worker.onnx_backend import padded_width

    embedder = load_candidate(model, "openvino")
    embedder.width_step = step
    ids = embedder.tokenize(long_texts(n)).ids
    embedder.encode_ids([ids[0][:2]])  # the engine's own first pass, on a width no text below has
    passes: dict[str, list[float]] = {}
    for label in ("first", "again"):
        passes[label] = []
        for seq in ids:
            start = time.perf_counter()
            embedder.encode_ids([seq])
            passes[label].append((time.perf_counter() - start) * 1000)
    widths = {len(seq) for seq in ids}
    return {"precision": embedder.precision, "passes": passes, "lengths": len(widths),
            "shapes": len({padded_width(w, step, embedder.max_tokens) for w in widths})}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", default="1,8,16,32", help="width steps, comma-separated (1: no rounding)")
    parser.add_argument("--texts", type=int, default=40, help="lone texts (bench/peers.py sends 40)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.model, args.child, args.texts)))
        return 0
    steps = [int(s) for s in args.steps.split(",")]
    runs: dict[int, list[dict]] = {s: [] for s in steps}
    for round_ in range(args.rounds):
        order = steps[round_ % len(steps):] + steps[:round_ % len(steps)]
        for step in order:
            out = subprocess.run([sys.executable, __file__, "--child", str(step), "--texts", str(args.texts),
                                  "--model", args.model], check=True, capture_output=True, text=True).stdout
            runs[step].append(json.loads(out.strip().splitlines()[-1]))
    first = runs[steps[0]][0]
    print(f"# {cpu_name()}, {os.cpu_count()} cores, {platform.machine()}; OpenVINO {first['precision']}; "
          f"{args.texts} long texts ({first['lengths']} lengths), {args.rounds} rounds")
    print("| width step | shapes | first p50 ms | first mean ms | again p50 ms | again mean ms |")
    print("|---|---|---|---|---|---|")
    for step in steps:
        cells = []
        for label in ("first", "again"):
            values = [v for run in runs[step] for v in run["passes"][label]]
            cells += [f"{statistics.median(values):.2f}", f"{statistics.mean(values):.2f}"]
        print(f"| {step} | {runs[step][0]['shapes']} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
