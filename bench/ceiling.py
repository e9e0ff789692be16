"""Reference: what the machine's cores can compute at best, with the worker's own model code and batch planner.

Run by bench/run.py as a child process (so that the load generator never imports torch)::

    python bench/ceiling.py --texts texts.json --model PATH [--precision auto]

One torch thread runs the worker's ``SentenceTransformerEmbedder`` (the precision ``auto`` picks, as a worker
would) over every text, in the batches ``worker.batching.plan_groups`` cuts from all of them at once (the best
case for batching: everything known in advance), with no HTTP, broker or tokenizing in the timed part. The
per-core rate times the physical cores is an upper bound for any server of this model on this machine: a
served figure near it leaves nothing to gain from serving, only from the arithmetic. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def planned(embedder: Any, ids: list[list[int]]) -> list[list[int]]:
    """Indices of ``ids`` in the batches a CPU worker's planner cuts from all of them at once."""
    from worker.batching import default_cost_model, plan_groups
    from worker.worker import default_token_budget

    cost = default_cost_model("cpu", embedder.precision)
    return [group for _, group in plan_groups([len(seq) for seq in ids], default_token_budget("cpu"), 256, cost)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--texts", required=True, help="JSON file: a list of strings")
    parser.add_argument("--model", required=True)
    parser.add_argument("--precision", default="auto")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from worker.devices import physical_cores
    from worker.embedder import SentenceTransformerEmbedder

    with open(args.texts, encoding="utf-8") as f:
        texts = json.load(f)
    embedder = SentenceTransformerEmbedder(args.model, args.model, "cpu", args.precision, threads=1)
    ids = embedder.tokenize(texts).ids
    batches = [[ids[i] for i in group] for group in planned(embedder, ids)]
    embedder.encode_ids(batches[len(batches) // 2])  # warm-up
    start, cpu = time.perf_counter(), time.thread_time()
    for batch in batches:
        embedder.encode_ids(batch)
    seconds, cpu = time.perf_counter() - start, time.thread_time() - cpu
    cores = physical_cores()
    print(json.dumps({"texts": len(texts), "batches": len(batches), "precision": embedder.precision,
                      "seconds": seconds, "per_core_texts_per_s": len(texts) / cpu, "cores": cores,
                      "texts_per_s": cores * len(texts) / cpu, "wall_per_core_texts_per_s": len(texts) / seconds}))


if __name__ == "__main__":
    main()
