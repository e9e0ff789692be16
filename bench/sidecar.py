"""The desktop sidecar's figures: embed-cluster next to the seed design, side by side in one run.

    python bench/sidecar.py [--texts N] [--starts N] [--light N] [--model ID_OR_PATH] [--cluster-arg ARG ...]

For the default ``embed-cluster up`` and bench/seed_server.py (one process, sentence-transformers, requests
one at a time), on the same real texts (bench/corpus.py), it prints:

- start-up: seconds from starting the command to the first 200 from ``/health``, over ``--starts``
  alternating starts of each (one untimed start of each first, so both find a warm disk cache and the
  cluster its ONNX export);
- lone-text latency: single-text requests at light load, sent in turn to one server and then the other, so
  that a moment of noise from the machine's other users hits both alike; p50 and p95;
- throughput in the three shapes of bench/run.py (bench/load.py SHAPES), each server in turn;
- memory: the PSS of every process of each tree after load (model loaded, the lone texts served) and again
  after the throughput shapes (PSS counts shared pages once);
- the physical limit: the fp32 matmul peak of this machine measured in this run (numpy on every core,
  bench/matmul_peak.py in a child process) divided by the model's FLOPs a text on these texts
  (:func:`flops_per_text`, from its config and the texts' token counts);
- the worst cosine of the cluster's vectors to the seed's (sentence-transformers fp32);
- each ratio next to its target (issue 11).

Writes the JSON under bench/results/ (git-ignored). The load generator never imports torch.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `python bench/sidecar.py` from anywhere

from bench import corpus, procs
from bench.load import EMBED, SHAPES, cosine_rows, interleaved_lone, run_shape
from bench.run import DEFAULT_MODEL, RESULTS, machine, reference_path


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- the physical limit -----------------------------------------------------------------------------------
def flops_per_text(model_path: str, lengths: list[int]) -> float:
    """Mean FLOPs of one unpadded forward pass of a BERT-style encoder over texts of these token counts: per
    layer and token, the Q, K, V and output projections (4 H^2 multiply-adds) and the feed-forward (2 H I),
    plus attention's scores and weighted sum (2 n H for a text of n tokens); 2 FLOPs a multiply-add."""
    config = json.loads((Path(model_path) / "config.json").read_text(encoding="utf-8"))
    hidden, layers = config["hidden_size"], config["num_hidden_layers"]
    inner = config.get("intermediate_size", 4 * hidden)
    per_text = [2 * layers * n * (4 * hidden * hidden + 2 * hidden * inner + 2 * n * hidden) for n in lengths]
    return float(np.mean(per_text))


def token_lengths(model_path: str, texts: list[str]) -> list[int]:
    """Each text's tokens as the model is fed them: cased, truncated and with special tokens as the served
    ONNX path tokenizes (worker/onnx_backend.py), which matches sentence-transformers' ids."""
    from worker.onnx_backend import load_tokenizers, read_pipeline

    pipeline = read_pipeline(model_path)
    tokenizer = load_tokenizers(pipeline).model
    return [len(e.ids) for e in tokenizer.encode_batch(pipeline.cased(texts), add_special_tokens=True)]


def matmul_peak(dtype: str = "fp32", n: int = 2048) -> dict[str, Any]:
    """bench/matmul_peak.py's figure for ``dtype``, measured in a child process (the bench never imports torch)."""
    out = subprocess.run([sys.executable, str(Path(__file__).parent / "matmul_peak.py"), "--dtype", dtype,
                          "--n", str(n)], capture_output=True, text=True, check=True, env=procs.child_env())
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- servers ------------------------------------------------------------------------------------------------
class Side:
    """How to start one of the two servers on a port of its own."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str] | None = None,
                 log_path: Path | None = None) -> None:
        self.name = name
        self.argv = argv
        self.env = env  # None: procs.child_env()
        self.log_path = log_path or RESULTS / f"sidecar-{name}.log"

    def start(self, port: int) -> tuple[procs.Server, float]:
        """Start it; return it and the seconds to its first 200 from /health."""
        argv = [a.replace("{port}", str(port)) for a in self.argv]
        began = time.monotonic()
        server = procs.Server(argv, self.log_path, self.env)
        server.port = port
        try:
            procs.wait_healthy(port, 600, server, interval=0.02)  # polled often: the seconds are the figure
        except procs.ServerError as exc:
            server.stop()
            raise procs.ServerError(f"{self.name}: {exc}") from None
        return server, time.monotonic() - began


def cpu_seconds(pid: int) -> float:
    return sum(u["cpu_s"] for u in procs.usage(pid).values())


def tree_pss(pid: int) -> dict[str, float]:
    return {role: round(u["pss_mb"], 1) for role, u in procs.usage(pid).items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=256, help="texts per throughput shape (default 256)")
    parser.add_argument("--starts", type=int, default=3, help="timed starts of each server (default 3)")
    parser.add_argument("--light", type=int, default=60, help="lone-text requests to each (default 60)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="model id or local path (default: the bundled one)")
    parser.add_argument("--cluster-arg", action="append", default=[], metavar="ARG",
                        help="one more argument for embed-cluster up (repeat it for each)")
    parser.add_argument("--out", type=Path, help="JSON results file (default: bench/results/sidecar-<time>.json)")
    args = parser.parse_args(argv)
    RESULTS.mkdir(exist_ok=True)
    model_path = reference_path(args.model)
    selected = corpus.load(args.texts)
    texts = [row["text"] for row in selected]
    queries = [row["text"] for row in corpus.load(2000) if row["kind"] == "query"]
    sides = {
        "seed": Side("seed", [sys.executable, str(Path(__file__).parent / "seed_server.py"), "--model", model_path,
                              "--port", "{port}"]),
        "cluster": Side("cluster", [sys.executable, "-m", "supervisor.cli", "up", "--port", "{port}",
                                    "--model", args.model,  # against the seed: the model, not the cache
                                    *([] if "--cache" in args.cluster_arg else ["--cache", "off"]),
                                    *args.cluster_arg]),
    }
    report: dict[str, Any] = {"when": dt.datetime.now().isoformat(timespec="seconds"),
                              "command": " ".join(["python", *sys.argv]), "machine": machine(),
                              "load_average_start": os.getloadavg(), "model": args.model,
                              "corpus": corpus.describe(selected), "cluster_args": args.cluster_arg}
    log(f"corpus: {report['corpus']}; load average {report['load_average_start'][0]:.2f}")

    log("physical limit: fp32 matmul peak and the model's FLOPs a text ...")
    peak = matmul_peak()
    flops = flops_per_text(model_path, token_lengths(model_path, texts))
    report["limit"] = {**peak, "gflops_per_text": round(flops / 1e9, 3),
                       "texts_per_s": round(peak["gflops"] * 1e9 / flops, 1)}
    log(f"  {peak['gflops']:.0f} GFLOP/s, {flops / 1e9:.3f} GFLOP a text: {report['limit']['texts_per_s']} texts/s")

    log("start-up (one untimed start of each, then alternating timed starts) ...")
    startup: dict[str, list[float]] = {name: [] for name in sides}
    for round_ in range(args.starts + 1):
        for name, side in sides.items():
            server, seconds = side.start(procs.free_port())
            server.stop()
            if round_:
                startup[name].append(round(seconds, 2))
            log(f"  {name}: {seconds:.2f}s{'' if round_ else ' (untimed warm-up)'}")
    report["startup_s"] = startup

    servers = {name: side.start(procs.free_port())[0] for name, side in sides.items()}
    try:
        info = procs.get_json(servers["cluster"].port, "/info")
        report["cluster_info"] = {k: info.get(k) for k in ("model", "dim", "device", "precision", "backend")}
        report["cluster_info"]["workers"] = [{k: w.get(k) for k in ("id", "backend", "compute_threads")}
                                             for w in info.get("workers") or []]
        log("lone text, interleaved ...")
        lone = interleaved_lone({n: (s.port, EMBED) for n, s in servers.items()}, queries, args.light)
        report["lone_ms"] = {n: {"p50": round(statistics.median(v), 2), "p95": round(float(np.percentile(v, 95)), 2)}
                             for n, v in lone.items()}
        log(f"  {report['lone_ms']}")
        # "after load": the model loaded and a few lone queries served (what a desktop app holds while idle)
        report["pss_loaded_mb"] = {name: tree_pss(server.proc.pid) for name, server in servers.items()}
        report["shapes"] = {}
        vectors: dict[str, dict[str, np.ndarray]] = {}
        for shape in SHAPES:
            row = {}
            for name, server in servers.items():
                before, busy = cpu_seconds(server.proc.pid), procs.machine_busy_seconds()
                result = run_shape(server.port, texts, shape)
                cpu, busy = cpu_seconds(server.proc.pid) - before, procs.machine_busy_seconds() - busy
                row[name] = {"texts_per_s": round(result.texts_per_s, 1), "p50_ms": round(result.percentile(50), 1),
                             "p99_ms": round(result.percentile(99), 1),
                             "cpu_ms_per_text": round(cpu * 1000 / result.texts, 2),
                             # other processes' cores meanwhile (0: a quiet machine; the client is one of them)
                             "others_cores": round(max(0.0, busy - cpu) / result.seconds, 2)}
                vectors.setdefault(shape.name, {})[name] = result.vectors
            row["min_cosine"] = float(cosine_rows(vectors[shape.name]["cluster"], vectors[shape.name]["seed"]).min())
            report["shapes"][shape.name] = row
            log(f"  {shape.name}: {row}")
        report["pss_mb"] = {name: tree_pss(server.proc.pid) for name, server in servers.items()}
    finally:
        for server in servers.values():
            server.stop()
    report["load_average_end"] = os.getloadavg()
    report["ratios"] = ratios(report)
    out = args.out or RESULTS / f"sidecar-{dt.datetime.now():%Y%m%d-%H%M%S}.json"
    out.write_text(json.dumps(report, indent=2), encoding="utf-8")
    print(render(report))
    print(f"\nJSON: {out}")
    return 0


def ratios(r: dict[str, Any]) -> dict[str, Any]:
    pss = {name: sum(parts.values()) for name, parts in r["pss_mb"].items()}
    loaded = {name: sum(parts.values()) for name, parts in r["pss_loaded_mb"].items()}
    start = {name: statistics.median(v) for name, v in r["startup_s"].items()}
    out = {"pss_loaded": loaded["cluster"] / loaded["seed"], "pss": pss["cluster"] / pss["seed"],
           "startup": start["cluster"] / start["seed"],
           "lone_p50": r["lone_ms"]["cluster"]["p50"] / r["lone_ms"]["seed"]["p50"],
           "cosine": min(row["min_cosine"] for row in r["shapes"].values())}
    cores = r["machine"]["physical_cores"]
    for shape, row in r["shapes"].items():
        out[f"vs_seed {shape}"] = row["cluster"]["texts_per_s"] / row["seed"]["texts_per_s"]
        out[f"of_limit {shape}"] = row["cluster"]["texts_per_s"] / r["limit"]["texts_per_s"]
        # the rate every core would give at the CPU time a text took: what a quiet machine allows
        out[f"cpu_of_limit {shape}"] = cores * 1000 / row["cluster"]["cpu_ms_per_text"] / r["limit"]["texts_per_s"]
    return {k: round(v, 3) if k != "cosine" else round(v, 6) for k, v in out.items()}


def render(r: dict[str, Any]) -> str:
    m = r["machine"]
    lines = [f"machine: {m['cpu']}, {m['physical_cores']} physical cores; load average "
             f"{r['load_average_start'][0]:.2f} at start, {r['load_average_end'][0]:.2f} at end",
             f"model: {r['model']}; texts: {r['corpus']}",
             f"cluster: {r['cluster_info']}",
             f"physical limit: {r['limit']['gflops']:.0f} GFLOP/s fp32 matmul / {r['limit']['gflops_per_text']} GFLOP "
             f"a text = {r['limit']['texts_per_s']} texts/s", "",
             f"{'':34} {'seed design':>16} {'embed-cluster':>16} {'ratio':>8} {'target':>10}"]
    pss = {name: sum(parts.values()) for name, parts in r["pss_mb"].items()}
    ratio = r["ratios"]

    def row(label: str, seed: str, cluster: str, key: str, target: str) -> None:
        lines.append(f"{label:34} {seed:>16} {cluster:>16} {ratio[key]:>8.3f} {target:>10}")

    loaded = {name: sum(parts.values()) for name, parts in r["pss_loaded_mb"].items()}
    row("memory after load, PSS (MB)", f"{loaded['seed']:.0f}", f"{loaded['cluster']:.0f}", "pss_loaded", "<= 1.0")
    row("memory after the shapes, PSS (MB)", f"{pss['seed']:.0f}", f"{pss['cluster']:.0f}", "pss", "<= 1.0")
    s = r["startup_s"]
    row("start to healthy /health (s)", "/".join(f"{v:.1f}" for v in s["seed"]),
        "/".join(f"{v:.1f}" for v in s["cluster"]), "startup", "<= 0.75")
    lone = r["lone_ms"]
    row("lone text p50 (ms)", f"{lone['seed']['p50']:.1f}", f"{lone['cluster']['p50']:.1f}", "lone_p50", "<= 0.7")
    for shape, values in r["shapes"].items():
        row(f"{shape} (texts/s)", f"{values['seed']['texts_per_s']:.1f}", f"{values['cluster']['texts_per_s']:.1f}",
            f"vs_seed {shape}", ">= 3.0")
        lines.append(f"{'':34} {'':16} {'of the limit':>16} {ratio[f'of_limit {shape}']:>8.3f} {'>= 0.65':>10}")
        lines.append(f"{'  CPU ms a text (whole tree)':34} {values['seed']['cpu_ms_per_text']:>16.1f} "
                     f"{values['cluster']['cpu_ms_per_text']:>16.1f} {ratio[f'cpu_of_limit {shape}']:>8.3f} "
                     f"{'(of limit)':>10}")
        lines.append(f"{'  other processes, cores':34} {values['seed']['others_cores']:>16.2f} "
                     f"{values['cluster']['others_cores']:>16.2f}")
    lines.append(f"{'worst cosine, cluster to seed fp32':34} {'':16} {'':16} {ratio['cosine']:>8.6f} {'> 0.999':>10}")
    lines.append("")
    for when, key in (("after load", "pss_loaded_mb"), ("after the shapes", "pss_mb")):
        for name, parts in r[key].items():
            lines.append(f"PSS {name} {when}: " + ", ".join(f"{role} {mb:.0f} MB" for role, mb in parts.items()))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
