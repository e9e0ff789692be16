"""Fit the batch planner's cost model (worker/batching.py CostModel) to this machine and model.

It times one padded forward pass for every batch of 1-64 texts x 8-256 tokens and fits, by least squares on
relative error, ``seconds = a + c * size * width * (1 + width / attention_width)``; it prints the model as
``CostModel(overhead=a / c, attention_width=...)``, the overhead in tokens. On CPU it uses one torch thread
and the thread's CPU time, which other processes on the machine disturb much less than wall time.

    python bench/calibrate.py [--model ID_OR_PATH] [--device cpu|cuda] [--precision auto|fp32|fp16w|...]
                              [--backend torch|onnx|openvino]

It loads the model as a worker does (``--precision auto`` by default: what the worker would pick here);
``--backend onnx`` times the ONNX Runtime embedder (worker/onnx_backend.py, one intra-op thread, fp32);
``--backend openvino`` the OpenVINO one (worker/openvino_backend.py, at the precision a worker measures it at
here: bf16 where the CPU has native bf16, else fp32) on every core as a worker runs it, so in wall time: run
it on a quiet machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SIZES = (1, 2, 4, 8, 16, 32, 64)
WIDTHS = (8, 16, 32, 64, 128, 256)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="auto", help="as the worker's --precision (default auto)")
    parser.add_argument("--backend", default="torch", choices=("torch", "onnx", "openvino"))
    parser.add_argument("--max-tokens", type=int, default=16384, help="largest batch timed, in padded tokens")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from bench.run import reference_path

    on_cpu = args.device == "cpu"
    if args.backend == "onnx":
        from worker.onnx_backend import prepare

        embedder = prepare(reference_path(args.model), args.model, lambda kind, data: None, threads=1)
    elif args.backend == "openvino":
        from bench.engines import load_candidate

        embedder = load_candidate(args.model, "openvino", args.precision)
    else:
        from worker.embedder import SentenceTransformerEmbedder

        embedder = SentenceTransformerEmbedder(reference_path(args.model), args.model, args.device, args.precision,
                                               1 if on_cpu else None)
    print(f"precision {embedder.precision}", file=sys.stderr)
    clock = time.thread_time if on_cpu and args.backend != "openvino" else time.perf_counter

    def seconds(size: int, width: int) -> float:
        ids = [[101, *[2000 + (i * 7 + j) % 5000 for i in range(width - 2)], 102] for j in range(size)]
        embedder.encode_ids(ids)
        best = float("inf")
        for _ in range(3):
            start = clock()
            embedder.encode_ids(ids)
            if not on_cpu:
                import torch

                torch.cuda.synchronize()
            best = min(best, clock() - start)
        return best

    rows, times = [], []
    for width in WIDTHS:
        width = min(width, embedder.max_tokens)
        for size in SIZES:
            if size * width <= args.max_tokens:
                t = seconds(size, width)
                rows.append([1.0, size * width, size * width * width])
                times.append(t)
                print(f"{size:3d} x {width:3d}: {t * 1000:8.2f} ms", file=sys.stderr, flush=True)
    x, y = np.asarray(rows), np.asarray(times)
    (a, c, d), *_ = np.linalg.lstsq(x / y[:, None], np.ones_like(y), rcond=None)
    worst = float(np.max(np.abs(x @ np.array([a, c, d]) / y - 1)))
    print(f"{a * 1000:.2f} ms a pass, {c * 1000:.4f} ms a token, worst fit error {worst:.0%}")
    print(f"CostModel(overhead={a / c:.1f}, attention_width={c / d if d > 0 else float('inf'):.0f})")


if __name__ == "__main__":
    main()
