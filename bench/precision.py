"""What each CPU number format does to one worker: single-query latency, batch rate, memory and vectors.

    python bench/precision.py [--model ID_OR_PATH] [--precisions fp32,fp16w] [--texts 480] [--kernels]

For each precision (each in a fresh child process, one torch thread, as a worker runs it) it loads the model
through the worker's embedder and prints: the resident memory after loading, the p50 of one corpus query at a
time (20 ms apart, so that each starts as a lone request does), the rate over the corpus in the worker
planner's batches, and the worst cosine of its vectors to fp32's. ``--kernels`` also times the 36 Linear
layers of a MiniLM-sized encoder (6 x [4 x 384x384, 384x1536, 1536x384]) at 1, 20, 128 and 2048 rows with
each kernel torch offers on a CPU: fp32 (MKL), fbgemm with fp16 weights (fp16w), MKL and oneDNN with
pre-packed fp32 weights.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def measure(model: str, precision: str, n: int, vectors_out: str) -> dict[str, Any]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from bench import corpus
    from bench.ceiling import planned
    from worker.embedder import SentenceTransformerEmbedder

    embedder = SentenceTransformerEmbedder(model, model, "cpu", precision, threads=1)
    rss_mb = _status_mb("VmRSS")
    rows = corpus.load(n)
    texts = [row["text"] for row in rows]
    queries = embedder.tokenize([row["text"] for row in rows if row["kind"] == "query"]).ids[:60]
    ids = embedder.tokenize(texts).ids
    for seq in queries[:3]:
        embedder.encode_ids([seq])
    single = []
    for seq in queries:
        time.sleep(0.02)
        start = time.perf_counter()
        embedder.encode_ids([seq])
        single.append((time.perf_counter() - start) * 1000)
    vectors = np.empty((len(ids), embedder.dim), dtype=np.float32)
    start = time.thread_time()
    for group in planned(embedder, ids):
        vectors[group] = embedder.encode_ids([ids[i] for i in group])
    seconds = time.thread_time() - start
    np.save(vectors_out, vectors)
    return {"precision": embedder.precision, "rss_after_load_mb": round(rss_mb, 1),
            "query_tokens_median": statistics.median(len(seq) for seq in queries),
            "single_query_p50_ms": round(statistics.median(single), 2),
            "texts_per_s_one_thread": round(len(ids) / seconds, 2)}


def _status_mb(field: str) -> float:
    with open("/proc/self/status", encoding="utf-8") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def kernels() -> None:
    import torch

    torch.set_num_threads(1)
    shapes = [(384, 384)] * 4 + [(1536, 384), (384, 1536)]
    weights = [(torch.randn(o, i) * 0.05, torch.randn(o) * 0.01) for _ in range(6) for o, i in shapes]
    variants = {
        "fp32 (MKL)": (lambda w, b, m: (w, b), lambda x, p: torch.nn.functional.linear(x, *p)),
        "fbgemm fp16 weights (fp16w)": (lambda w, b, m: torch.ops.quantized.linear_prepack_fp16(w, b),
                                        lambda x, p: torch.ops.quantized.linear_dynamic_fp16(x, p)),
        "MKL, packed fp32": (lambda w, b, m: (torch.ops.mkl._mkl_reorder_linear_weight(w, m), w, b),
                             lambda x, p: torch.ops.mkl._mkl_linear(x, p[0], p[1], p[2], x.shape[0])),
        "oneDNN, packed fp32": (lambda w, b, m: (torch.ops.mkldnn._reorder_linear_weight(w, m), b),
                                lambda x, p: torch.ops.mkldnn._linear_pointwise(x, p[0], p[1], "none", [], "")),
    }
    print("\n36 Linear layers of a MiniLM-sized encoder, one thread, ms (median of 20 passes, 10 ms apart):")
    print(f"{'kernel':<30}" + "".join(f"{f'{m} rows':>12}" for m in (1, 20, 128, 2048)))
    for name, (prepare, run) in variants.items():
        cells = []
        for m in (1, 20, 128, 2048):
            try:
                packed = [prepare(w, b, m) for w, b in weights]
                inputs = {k: torch.randn(m, k) for k in (384, 1536)}
                times = []
                for rep in range(23):
                    time.sleep(0.01)
                    start = time.perf_counter()
                    for (w, _), p in zip(weights, packed, strict=True):
                        run(inputs[w.shape[1]], p)
                    if rep >= 3:
                        times.append((time.perf_counter() - start) * 1000)
                cells.append(f"{statistics.median(times):>12.2f}")
            except (RuntimeError, AttributeError, NotImplementedError):
                cells.append(f"{'n/a':>12}")
        print(f"{name:<30}" + "".join(cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2")
    parser.add_argument("--precisions", default="fp32,fp16w")
    parser.add_argument("--texts", type=int, default=480)
    parser.add_argument("--kernels", action="store_true", help="also time the Linear kernels")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # child mode: measure this precision
    parser.add_argument("--vectors", help=argparse.SUPPRESS)
    args = parser.parse_args()
    from bench.run import reference_path

    path = reference_path(args.model)
    if args.one:
        print(json.dumps(measure(path, args.one, args.texts, args.vectors)))
        return
    results, vectors = [], {}
    with tempfile.TemporaryDirectory(prefix="embed-precision-") as tmp:
        for precision in args.precisions.split(","):
            out = Path(tmp) / f"{precision}.npy"
            child = subprocess.run([sys.executable, __file__, "--model", args.model, "--texts", str(args.texts),
                                    "--one", precision, "--vectors", str(out)],
                                   capture_output=True, text=True, check=False)
            if child.returncode != 0:
                print(f"{precision} failed:\n{child.stderr[-2000:]}", file=sys.stderr)
                continue
            results.append(json.loads(child.stdout.strip().splitlines()[-1]))
            vectors[precision] = np.load(out)
    from bench.load import cosine_rows

    print(f"{'precision':<12}{'RSS MB':>9}{'1 query p50 ms':>16}{'texts/s, 1 thread':>19}{'worst cos to fp32':>19}")
    for requested, r in zip([p for p in args.precisions.split(",") if p in vectors], results, strict=True):
        worst = cosine_rows(vectors[requested], vectors["fp32"]).min() if "fp32" in vectors else float("nan")
        print(f"{r['precision']:<12}{r['rss_after_load_mb']:>9.0f}{r['single_query_p50_ms']:>16.2f}"
              f"{r['texts_per_s_one_thread']:>19.2f}{worst:>19.6f}")
    if results:
        print(f"(queries: {results[0]['query_tokens_median']} tokens median; {args.texts} corpus texts)")
    if args.kernels:
        kernels()


if __name__ == "__main__":
    main()
