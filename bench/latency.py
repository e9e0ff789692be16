"""Where a lone query's time goes: the client's latency next to the front's own stage timings.

    python bench/latency.py [--requests 100] [--model ID_OR_PATH] [--cluster-arg ARG ...]

It starts ``embed-cluster up``, sends corpus queries one at a time, 50 ms apart (light load, as bench/run.py),
and reads the front's ``embed_stage_seconds`` histograms from /metrics before and after: ``encode`` is the
worker's forward pass, ``total`` the front's whole handling of the request, ``queue`` the broker's queue.
What is neither encode nor queue is the hops (front -> broker -> worker and back, tokenizing, planning);
what the client sees beyond ``total`` is HTTP (waitress, JSON, the client's own parsing).
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import corpus, procs
from bench.load import light_load

STAGE = re.compile(r'^embed_stage_seconds_(sum|count)\{stage="(\w+)"\} (\S+)$', re.M)


def stages(port: int) -> dict[tuple[str, str], float]:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {(m.group(2), m.group(1)): float(m.group(3)) for m in STAGE.finditer(text)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2")
    parser.add_argument("--cluster-arg", action="append", default=[], metavar="ARG")
    args = parser.parse_args()
    queries = [row["text"] for row in corpus.load(480) if row["kind"] == "query"]
    server = procs.start_cluster(args.model, args.cluster_arg, Path(tempfile.mkdtemp(prefix="embed-latency-")))
    try:
        light_load(server.port, queries, 5)  # warm both workers' paths
        before = stages(server.port)
        latencies = sorted(light_load(server.port, queries, args.requests))
        after = stages(server.port)
    finally:
        server.stop()

    def mean_ms(stage: str) -> float:
        count = after.get((stage, "count"), 0) - before.get((stage, "count"), 0)
        return 1000 * (after.get((stage, "sum"), 0) - before.get((stage, "sum"), 0)) / max(1, count)

    total, encode, queue = mean_ms("total"), mean_ms("encode"), mean_ms("queue")
    client = statistics.mean(latencies)
    print(f"{args.requests} single queries, 50 ms apart: client p50 {statistics.median(latencies):.1f} ms, "
          f"p95 {latencies[int(0.95 * (len(latencies) - 1))]:.1f} ms, mean {client:.1f} ms")
    print(f"  mean per request: forward pass (encode) {encode:.1f} ms, broker queue {queue:.2f} ms, "
          f"hops and tokenizing {total - encode - queue:.1f} ms, HTTP and JSON {client - total:.1f} ms")


if __name__ == "__main__":
    main()
