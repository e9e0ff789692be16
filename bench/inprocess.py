"""Reference: plain ``SentenceTransformer.encode(texts, batch_size=32)`` in this process, no server.

Run by bench/run.py as a child process (so that the load generator never imports torch)::

    python bench/inprocess.py --texts texts.json --model PATH --precision fp32 --vectors out.npy

It prints one JSON line: texts/s over the timed pass, the seconds and the CPU time per text it took;
``--vectors`` saves the normalized vectors, which the served vectors are compared with.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--texts", required=True, help="JSON file: a list of strings")
    parser.add_argument("--model", required=True)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--vectors", help="save the vectors here (.npy)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from sentence_transformers import SentenceTransformer

    from bench.procs import machine_busy_seconds

    with open(args.texts, encoding="utf-8") as f:
        texts = json.load(f)
    model = SentenceTransformer(args.model, device="cpu")
    if args.precision == "bf16":
        model.to(torch.bfloat16)
    model.encode(texts[:32], batch_size=32)  # warm-up
    busy = machine_busy_seconds()
    start, cpu = time.perf_counter(), time.process_time()
    vectors = model.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_tensor=True)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    others = (machine_busy_seconds() - busy - cpu) / seconds  # cores other processes used meanwhile
    if args.vectors:
        np.save(args.vectors, vectors.float().cpu().numpy())
    print(json.dumps({"texts": len(texts), "seconds": seconds, "texts_per_s": len(texts) / seconds,
                      "cpu_ms_per_text": cpu * 1000 / len(texts), "others_cores": round(max(0.0, others), 2),
                      "threads": torch.get_num_threads(), "precision": args.precision}))


if __name__ == "__main__":
    main()
