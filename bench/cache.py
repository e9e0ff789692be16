"""The vector cache's figures (issue 22's targets), on the bundled model and bench/corpus.py's real texts.

    python -m bench.cache [--quick] [--file-mb 500] [--rounds 2]

Two clusters run side by side: one with the cache on, its file filled beforehand with ``--file-mb`` MB of
rows no real text maps to (so it is cold for every text here, and as large as a well-used one), and one with
``--cache off``. It prints

- a 64-text request that is all hits: served p50/p95 (until the answer's last byte), and the same request
  computed (``cache: false``);
- the same real chunks embedded a second time, through the bulk command (``embed-cluster embed`` of the corpus
  as text files, into a new output folder) and through ``/embed`` in 32-text requests: first and second time;
- 64-text requests half of whose texts are cached, against all-miss requests of the same texts' lengths;
- every shape of bench/run.py, with the cache on and cold (texts never seen: each run's are prefixed anew)
  against the cache off, in alternate rounds;
- the front's PSS with the cache file against the front without a cache, after the same requests.

The load generator runs on the same machine; timings are noisy there: compare figures of one run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `python bench/cache.py` from anywhere

from bench import corpus, procs
from bench.load import SHAPES, Client, run_shape
from embed_common import protocol
from embed_common.protocol import Encoding
from embed_common.vector_cache import ROW_OVERHEAD, Entry, VectorStore

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
DIM = 384


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def fill(path: Path, megabytes: int) -> int:
    """Rows of random keys and vectors until the file holds about ``megabytes`` MB; how many."""
    rows = megabytes * 1_000_000 // (16 + DIM * 12 + ROW_OVERHEAD)  # a served row's JSON: about 12 bytes a number
    store = VectorStore(path, max(megabytes * 2_000_000, 1 << 20))
    rng = np.random.default_rng(0)
    try:
        for start in range(0, rows, 4096):
            count = min(4096, rows - start)
            vectors = rng.standard_normal((count, DIM)).astype(np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)  # numbers of a served row's length
            store.put([(os.urandom(16), Entry(protocol.encode_vectors(v[None, :], Encoding.JSON), 10))
                       for v in vectors])
            store.flush(600)  # within the store's write queue
    finally:
        store.close()
    return rows


def post(port: int, texts: list[str], **body: Any) -> tuple[float, bytes]:
    """Seconds until the answer's last byte, and the answer."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    try:
        data = json.dumps({"texts": texts, **body}).encode()
        start = time.perf_counter()
        conn.request("POST", "/embed", data, {"Content-Type": "application/json"})
        response = conn.getresponse()
        answer = response.read()
        seconds = time.perf_counter() - start
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {answer[:200]!r}")
        return seconds, answer
    finally:
        conn.close()


def latencies(port: int, batches: list[list[str]], **body: Any) -> list[float]:
    """ms per request over one keep-alive connection (bench/load.py Client: timed to the last byte)."""
    client = Client(port)
    try:
        out = []
        for texts in batches:
            if body:
                out.append(post(port, texts, **body)[0] * 1000)
            else:
                out.append(client.embed(texts)[0] * 1000)
        return out
    finally:
        client.close()


def p(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 2)


def hit_latency(port: int, texts: list[str], requests: int) -> dict[str, Any]:
    batch = texts[:64]
    post(port, batch)
    time.sleep(1.0)  # written by the front's writer thread
    hits = latencies(port, [batch] * requests)
    computed = latencies(port, [batch] * max(5, requests // 20), cache=False)
    return {"hit_p50_ms": p(hits, 50), "hit_p95_ms": p(hits, 95), "computed_p50_ms": p(computed, 50)}


def second_time(port: int, texts: list[str], work: Path, chunk_tokens: int) -> dict[str, Any]:
    """The corpus as 40 text files through the bulk command twice (new output folders; the time of the whole
    command, its start included), then its chunks through /embed in 32-text requests twice."""
    files = work / "corpus"
    files.mkdir()
    per_file = max(1, len(texts) // 40)  # 40 documents of many passages (the bulk command syncs each file's rows)
    for i in range(0, len(texts), per_file):
        (files / f"{i:04d}.txt").write_text("\n\n".join(texts[i:i + per_file]), encoding="utf-8")
    out: dict[str, Any] = {}
    for run in ("first", "second"):
        env = {k: v for k, v in os.environ.items() if not k.startswith("EMBED_")}
        command = [sys.executable, "-m", "supervisor.cli", "embed", str(files), "-o", str(work / f"out-{run}"),
                   "--url", f"http://127.0.0.1:{port}", "--chunk-tokens", str(chunk_tokens), "--no-progress",
                   "--format", "npy"]
        started = time.perf_counter()
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=3600, check=True)
        seconds = time.perf_counter() - started
        finished = [json.loads(line[9:]) for line in done.stdout.splitlines() if line.startswith("PROGRESS:")]
        data = next(e["data"] for e in finished if e["type"] == "embed_finished")
        out[f"bulk_{run}_s"] = round(seconds, 2)
        out[f"bulk_{run}_hit_rate"] = round(data["cache_hits"] / max(1, data["cache_lookups"]), 4)
        out["bulk_chunks"] = data["rows"]
        time.sleep(1.0)
    out["bulk_speedup"] = round(out["bulk_first_s"] / out["bulk_second_s"], 1)
    chunks = [json.loads(line)["text"] for line in (work / "out-first" / "metadata.jsonl").open(encoding="utf-8")]
    chunks = [f"/embed {c}" for c in chunks[:2000]]  # texts of their own: the bulk's entries are chunked ones
    batches = [chunks[i:i + 32] for i in range(0, len(chunks), 32)]
    for run in ("first", "second"):
        out[f"embed_{run}_s"] = round(sum(latencies(port, batches)) / 1000, 2)
        time.sleep(1.0)
    out["embed_texts"] = len(chunks)
    out["embed_speedup"] = round(out["embed_first_s"] / out["embed_second_s"], 1)
    return out


def half_hits(port: int, texts: list[str], requests: int) -> dict[str, Any]:
    """64-text requests: 32 cached and 32 new, against 64 new (each new text prefixed anew: never seen)."""
    pool = [t for t in texts if len(t) < 2000]
    mixed, missed = [], []
    for r in range(requests):
        base = [pool[(r * 64 + i) % len(pool)] for i in range(64)]
        seen = [f"half {r}-{i} {t}" for i, t in enumerate(base[:32])]
        post(port, seen)
        time.sleep(0.3)
        mixed += latencies(port, [[*seen, *(f"new {r}-{i} {t}" for i, t in enumerate(base[32:]))]])
        missed += latencies(port, [[f"miss {r}-{i} {t}" for i, t in enumerate(base)]])
    return {"half_hit_p50_ms": p(mixed, 50), "all_miss_p50_ms": p(missed, 50),
            "ratio": round(p(mixed, 50) / p(missed, 50), 2)}


def shapes(on: int, off: int, texts: list[str], rounds: int) -> dict[str, Any]:
    """bench/run.py's shapes, the cache on and cold against off, alternating; the best of ``rounds`` each."""
    out: dict[str, Any] = {}
    for shape in SHAPES:
        best = {"on": 0.0, "off": 0.0}
        for r in range(rounds):
            for side, port in (("on", on), ("off", off)) if r % 2 == 0 else (("off", off), ("on", on)):
                fresh = [f"shape {shape.name} {r} {side}: {t}" for t in texts]  # cold: never seen
                best[side] = max(best[side], run_shape(port, fresh, shape).texts_per_s)
        out[shape.name] = {"on_texts_per_s": round(best["on"], 1), "off_texts_per_s": round(best["off"], 1),
                           "on_vs_off": round(best["on"] / best["off"], 3)}
        log(f"  {shape.name}: {out[shape.name]}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smaller file, fewer texts and rounds")
    parser.add_argument("--file-mb", type=int, help="MB of rows in the cache file beforehand (default 500)")
    parser.add_argument("--rounds", type=int, help="rounds of each bench/run.py shape on each side (default 2)")
    parser.add_argument("--chunk-tokens", type=int, default=48, help="the bulk command's chunks (default 48)")
    args = parser.parse_args(argv)
    megabytes = args.file_mb or (50 if args.quick else 500)
    rounds = args.rounds or (1 if args.quick else 2)
    selected = [row["text"] for row in corpus.load(200 if args.quick else None)]
    report: dict[str, Any] = {"command": " ".join(["python -m bench.cache", *(argv or sys.argv[1:])]),
                              "cpu": procs_cpu(), "load_average_start": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="embed-bench-cache-") as tmp:
        work = Path(tmp)
        path = work / "vectors.sqlite"
        started = time.perf_counter()
        report["file_rows"] = fill(path, megabytes)
        report["file_mb"] = round(path.stat().st_size / 1e6, 1)
        log(f"cache file: {report['file_rows']} rows, {report['file_mb']} MB in {time.perf_counter() - started:.0f}s")
        (work / "on").mkdir()
        (work / "off").mkdir()
        patient = ["--workers", "1", "--request-timeout", "600"]  # a busy machine: no 504 ends a shape
        on = procs.start_cluster(MODEL, [*patient, "--cache", str(path), "--cache-max-bytes",
                                         str(4 * megabytes * 1_000_000)], work / "on")
        off = procs.start_cluster(MODEL, [*patient, "--cache", "off"], work / "off")
        try:
            log("all-hit latency ...")
            report["hits"] = hit_latency(on.port, selected, 50 if args.quick else 200)
            log(f"  {report['hits']}")
            log("the same chunks a second time ...")
            report["second_time"] = second_time(on.port, selected, work, args.chunk_tokens)
            log(f"  {report['second_time']}")
            log("half hits ...")
            report["half_hits"] = half_hits(on.port, selected, 6 if args.quick else 12)
            log(f"  {report['half_hits']}")
            log("bench/run.py shapes, cache on and cold against off ...")
            shape_texts = [row["text"] for row in corpus.load(128 if args.quick else 480)]
            report["shapes"] = shapes(on.port, off.port, shape_texts, rounds)
            report["front_pss_mb"] = {"cache": round(procs.usage(on.proc.pid)["front"]["pss_mb"], 1),
                                      "off": round(procs.usage(off.proc.pid)["front"]["pss_mb"], 1)}
            report["front_pss_mb"]["growth"] = round(report["front_pss_mb"]["cache"] - report["front_pss_mb"]["off"],
                                                     1)
            report["cache_stats"] = procs.get_json(on.port, "/info")["cache"]
        finally:
            on.stop()
            off.stop()
    report["load_average_end"] = os.getloadavg()
    print(json.dumps(report, indent=2))
    return 0


def procs_cpu() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "?")
    except OSError:
        return "?"


if __name__ == "__main__":
    raise SystemExit(main())
