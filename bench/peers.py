"""embed-cluster next to every peer, side by side in one run on the same real texts: issue 19's table.

    python bench/peers.py [--peers NAME,...] [--quick] [--texts N] [--starts N] [--light N] [--bf16 auto]
                          [--infinity-venv DIR] [--up-arg ARG ...] [--model ID_OR_PATH] [--out FILE]

The rows (:data:`PEERS`; ``--peers`` takes their names or groups, default all):

- ``seed``: the seed design, bench/seed_server.py (one process, sentence-transformers fp32, serial);
- ``infinity-auto``, ``infinity-bf16`` (group ``infinity``): infinity-emb at ``--dtype auto`` and
  ``bfloat16``, installed into a venv of its own once (bench/infinity.py) and reused;
- ``st-fp32``, ``st-bf16`` (group ``st``): in-process ``SentenceTransformer.encode(batch_size=32)``
  (bench/inprocess.py in a child process); st-fp32's vectors are the reference of every cosine;
- ``up``, ``up-torch`` (group ``cluster``): ``embed-cluster up`` with its defaults, and with
  ``--backend torch`` (both with the vector cache off and the request deadline lifted: :data:`UP_FAIR`).

The columns: texts/s in the three shapes of bench/load.py (each server in turn, shape by shape, so that the
machine's drift is shared); the p50 of a lone long text (interleaved: sent to each server in turn); the PSS of
each server's process tree, loaded (the lone texts served) and after the shapes; the median of ``--starts``
timed starts to the first 200 from ``/health`` (after one untimed start of each, so that each finds a warm disk
cache and the cluster its ONNX export); the worst cosine of its vectors to st-fp32's. Beside them, the fp32 and
bf16 matmul peaks measured in the same run (bench/matmul_peak.py) over the model's FLOPs a text, each served
figure as a fraction of the bf16 limit, and issue 19's targets for the default ``up`` with pass or fail
(bench/peers_table.py).

On a CPU without native bf16 (no AVX512-BF16 or AMX) the bf16 rows are skipped and say so, unless
``--bf16 always``. ``--quick`` is a smoke run (few texts, one start each, small matrices): its figures only show
that every path works. Writes the JSON under bench/results/ (git-ignored); the load generator never imports
torch.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `python bench/peers.py` from anywhere

from bench import corpus, infinity, procs
from bench.load import EMBED, OPENAI, SHAPES, Api, LoadError, cosine_rows, interleaved_lone, run_shape
from bench.peers_table import render
from bench.run import DEFAULT_MODEL, RESULTS, machine, reference_path, run_inprocess
from bench.sidecar import Side, flops_per_text, matmul_peak, token_lengths, tree_pss


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class Setup:
    """What every peer's start needs, known once the run's options are read."""

    model: str
    model_path: str
    up_args: list[str]
    infinity_venv: Path
    infinity_exe: Path | None = None


@dataclass(frozen=True)
class Launch:
    argv: list[str]  # "{port}" stands for the port
    env: dict[str, str] | None
    api: Api


def _seed(setup: Setup) -> Launch:
    return Launch([sys.executable, str(procs.ROOT / "bench" / "seed_server.py"), "--model", setup.model_path,
                   "--port", "{port}"], None, EMBED)


def _infinity(dtype: str) -> Callable[[Setup], Launch]:
    def launch(setup: Setup) -> Launch:
        if setup.infinity_exe is None:
            setup.infinity_exe = infinity.ensure_venv(setup.infinity_venv, log)
        return Launch(infinity.argv(setup.infinity_exe, setup.model_path, dtype, "{port}"),
                      infinity.env(procs.child_env()), OPENAI)
    return launch


ENGINE_FACTS = ("backend", "precision", "device", "cosine")  # those of /info's that it has

# Every row computes every text: the cluster's vector cache is off, as infinity-emb's is (bench/infinity.py),
# since the shapes send the same texts again. The peers have no request deadline; the cluster's is lifted to
# the load client's own, so that a machine busy with other work slows every row alike instead of failing ours.
UP_FAIR = ("--cache", "off", "--request-timeout", "300")


def _up(*extra: str) -> Callable[[Setup], Launch]:
    def launch(setup: Setup) -> Launch:
        return Launch([sys.executable, "-m", "supervisor.cli", "up", "--port", "{port}", "--model", setup.model,
                       *UP_FAIR, *setup.up_args, *extra], None, EMBED)
    return launch


@dataclass(frozen=True)
class Peer:
    name: str
    group: str
    label: str
    bf16: bool = False  # computes in bf16: emulated and slow on a CPU without native bf16
    serve: Callable[[Setup], Launch] | None = None  # how to start it; None: in-process (bench/inprocess.py)
    precision: str = "fp32"  # the in-process precision


PEERS = (
    Peer("seed", "seed", "the seed design (falcon + ST fp32, serial)", serve=_seed),
    Peer("infinity-auto", "infinity", f"infinity-emb {infinity.VERSION}, `--dtype auto`", serve=_infinity("auto")),
    Peer("infinity-bf16", "infinity", f"infinity-emb {infinity.VERSION}, `--dtype bfloat16`", bf16=True,
         serve=_infinity("bfloat16")),
    Peer("st-fp32", "st", "in-process sentence-transformers fp32"),
    Peer("st-bf16", "st", "in-process sentence-transformers bf16", bf16=True, precision="bf16"),
    Peer("up", "cluster", "**embed-cluster `up`**", serve=_up()),
    Peer("up-torch", "cluster", "embed-cluster `up --backend torch`", serve=_up("--backend", "torch")),
)


def select(spec: str) -> list[Peer]:
    """The peers named in ``spec`` (names or groups, comma-separated; "all"), in :data:`PEERS` order."""
    wanted = {w.strip() for w in spec.split(",") if w.strip()}
    known = {p.name for p in PEERS} | {p.group for p in PEERS} | {"all"}
    if wanted - known:
        raise ValueError(f"unknown peer(s) {', '.join(sorted(wanted - known))}; known: {', '.join(sorted(known))}")
    return [p for p in PEERS if "all" in wanted or p.name in wanted or p.group in wanted]


@dataclass
class Running:
    peer: Peer
    side: Side
    api: Api
    server: procs.Server | None = None  # the last start's, kept for the measurements
    starts: list[float] = field(default_factory=list)

    @property
    def live(self) -> procs.Server:
        if self.server is None:
            raise RuntimeError(f"{self.peer.name} is not running")
        return self.server


def long_texts(n: int) -> list[str]:
    """Lone-text requests: the corpus's passages and paragraphs (its long texts), in its order."""
    return [row["text"] for row in corpus.rows() if row["kind"] in ("passage", "paragraph")][:max(n, 3)]


def start_all(running: list[Running], rounds: int, timed_from: int, rows: dict[str, dict[str, Any]]) -> None:
    """``rounds`` starts of each server, one after another (each stopped before the next starts, but for the
    last round's); rounds from ``timed_from`` on are timed. A server that fails to start is dropped."""
    for round_ in range(rounds):
        for item in list(running):
            try:
                server, seconds = item.side.start(procs.free_port())
            except (procs.ServerError, RuntimeError, OSError) as exc:
                log(f"  {item.peer.name}: failed: {exc}")
                rows[item.peer.name]["note"] = f"failed to start: {exc}"
                running.remove(item)
                continue
            timed = round_ >= timed_from
            if timed:
                item.starts.append(round(seconds, 2))
            log(f"  {item.peer.name}: {seconds:.2f}s{'' if timed else ' (untimed warm-up)'}")
            if round_ == rounds - 1:
                item.server = server
            else:
                server.stop()


def encode_in_process(peers: list[Peer], rows: dict[str, dict[str, Any]], texts: list[str], model_path: str,
                      workdir: Path) -> np.ndarray | None:
    """One pass of each in-process peer (bench/inprocess.py in a child process) over ``texts``: its rate joins
    the row's passes (``batch32`` is the best of them), its worst cosine to st-fp32's vectors is kept, and
    st-fp32's vectors (the reference of every cosine) are returned."""
    vectors: dict[str, np.ndarray] = {}
    for p in peers:
        row = rows[p.name]
        log(f"{p.name}: in-process encode, batches of 32 ...")
        try:
            result = run_inprocess(texts, model_path, p.precision, workdir)
        except RuntimeError as exc:
            row["note"] = f"failed: {str(exc)[-300:]}"
            continue
        vectors[p.name] = result.pop("vectors")
        row.setdefault("inprocess", []).append(result)
        row["batch32"] = round(max(run["texts_per_s"] for run in row["inprocess"]), 1)
        log(f"  {result['texts_per_s']:.1f} texts/s")
    reference = next((vectors[p.name] for p in peers if p.precision == "fp32" and p.name in vectors), None)
    if reference is not None:
        for name, v in vectors.items():
            worst = float(cosine_rows(v, reference).min())
            rows[name]["min_cosine"] = round(min(worst, rows[name].get("min_cosine", 1.0)), 6)
    return reference


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peers", default="all", help="names or groups, comma-separated (default all): " +
                        ", ".join(f"{p.name} ({p.group})" for p in PEERS))
    parser.add_argument("--quick", action="store_true", help="a smoke run: few texts, one start each")
    parser.add_argument("--texts", type=int, help="texts per throughput shape (default 512; --quick 32)")
    parser.add_argument("--starts", type=int, help="timed starts of each server (default 2; --quick 1)")
    parser.add_argument("--light", type=int, help="lone-text requests to each server (default 40; --quick 4)")
    parser.add_argument("--bf16", choices=("auto", "always", "never"), default="auto",
                        help="measure the bf16 rows: auto = where the CPU has native bf16 (default)")
    parser.add_argument("--infinity-venv", type=Path, default=infinity.DEFAULT_VENV,
                        help=f"infinity-emb's own venv, created once (default {infinity.DEFAULT_VENV})")
    parser.add_argument("--up-arg", action="append", default=[], metavar="ARG",
                        help="one more argument for every embed-cluster up row (repeat it for each)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="model id or local path (default: the bundled one)")
    parser.add_argument("--out", type=Path, help="JSON results file (default: bench/results/peers-<time>.json)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stopped: the servers it started are stopped too
    try:
        peers = select(args.peers)
    except ValueError as exc:
        parser.error(str(exc))
    n_texts = args.texts or (32 if args.quick else 512)
    starts = args.starts or (1 if args.quick else 2)
    n_light = args.light or (4 if args.quick else 40)
    RESULTS.mkdir(exist_ok=True)

    setup = Setup(args.model, reference_path(args.model), args.up_arg, args.infinity_venv)
    selected = corpus.load(n_texts)
    texts = [row["text"] for row in selected]
    lone = long_texts(n_light)
    lone_tokens = statistics.median(token_lengths(setup.model_path, lone))
    report: dict[str, Any] = {
        "when": dt.datetime.now().isoformat(timespec="seconds"), "command": " ".join(["python", *sys.argv]),
        "machine": machine(), "load_average_start": os.getloadavg(), "model": args.model,
        "corpus": corpus.describe(selected), "quick": args.quick, "up_args": args.up_arg,
        "lone_texts": f"{len(lone)} long texts (passages, paragraphs), median {lone_tokens:.0f} tokens",
        "shapes": [shape.name for shape in SHAPES],
    }
    m = report["machine"]
    log(f"CPU: {m['cpu']}; flags: {' '.join(m['flags'])}; native bf16: {m['native_bf16']}")
    log(f"texts: {report['corpus']}; load average {report['load_average_start'][0]:.2f}")
    bf16_ok = args.bf16 == "always" or (args.bf16 == "auto" and m["native_bf16"])
    rows: dict[str, dict[str, Any]] = {p.name: {"name": p.name, "label": p.label} for p in peers}
    for p in peers:
        if p.bf16 and not bf16_ok:
            rows[p.name]["note"] = ("skipped: this CPU has no native bf16, and emulated bf16 is slow "
                                    "(--bf16 always measures it)" if args.bf16 == "auto" else "skipped: --bf16 never")
    measured = [p for p in peers if not rows[p.name].get("note")]

    log("matmul peaks, fp32 and bf16 (bench/matmul_peak.py) ...")
    n_matrix = 512 if args.quick else 2048
    peaks = {dtype: matmul_peak(dtype, n_matrix) for dtype in ("fp32", "bf16")}
    flops = flops_per_text(setup.model_path, token_lengths(setup.model_path, texts))
    report["limits"] = {**peaks, "gflop_per_text": round(flops / 1e9, 4),
                        **{f"{d}_texts_per_s": round(peaks[d]["gflops"] * 1e9 / flops, 1) for d in peaks}}
    if not m["native_bf16"]:
        report["limits"]["bf16"]["note"] = "emulated: this CPU has no native bf16"
    log(f"  fp32 {peaks['fp32']['gflops']:.0f}, bf16 {peaks['bf16']['gflops']:.0f} GFLOP/s")

    workdir = Path(tempfile.mkdtemp(prefix="embed-peers-"))
    in_process = [p for p in measured if p.serve is None]
    reference = encode_in_process(in_process, rows, texts, setup.model_path, workdir)

    running: list[Running] = []
    for p in (p for p in measured if p.serve is not None):
        try:
            launch = p.serve(setup)
        except (RuntimeError, OSError) as exc:
            rows[p.name]["note"] = f"failed to install: {str(exc)[-300:]}"
            continue
        running.append(Running(p, Side(p.name, launch.argv, launch.env, RESULTS / f"peers-{p.name}.log"),
                               launch.api))
    warmups = 0 if args.quick else 1
    log(f"start-up: {warmups} untimed and {starts} timed start(s) of each server ...")
    start_all(running, warmups + starts, warmups, rows)
    try:
        for item in running:
            rows[item.peer.name]["start_s"] = item.starts
        for item in running:
            if item.peer.group == "cluster":  # what it chose to serve on, for the table's notes
                info = procs.get_json(item.live.port, "/info")
                rows[item.peer.name]["engine"] = {k: info[k] for k in ENGINE_FACTS if k in info}
        log("lone text, interleaved ...")
        latencies = interleaved_lone({i.peer.name: (i.live.port, i.api) for i in running}, lone, n_light)
        for name, values in latencies.items():
            rows[name]["lone_p50_ms"] = round(statistics.median(values), 2)
            rows[name]["lone_p95_ms"] = round(float(np.percentile(values, 95)), 2)
        for item in running:  # loaded: what a desktop app holds while it idles
            rows[item.peer.name]["pss_loaded_mb"] = round(sum(tree_pss(item.live.proc.pid).values()), 1)
        for shape in SHAPES:
            log(f"{shape.name} ...")
            for item in list(running):
                row = rows[item.peer.name]
                try:
                    result = run_shape(item.live.port, texts, shape, item.api)
                except LoadError as exc:
                    log(f"  {item.peer.name}: failed: {exc}")
                    row["note"] = f"failed under load: {exc}"
                    continue
                row.setdefault("shapes", {})[shape.name] = round(result.texts_per_s, 1)
                row.setdefault("p99_ms", {})[shape.name] = round(result.percentile(99), 1)
                if reference is None and item.peer.name == "seed":
                    reference = result.vectors  # the seed computes in sentence-transformers fp32 too
                if reference is not None:
                    worst = float(cosine_rows(result.vectors, reference).min())
                    row["min_cosine"] = round(min(worst, row.get("min_cosine", 1.0)), 6)
                log(f"  {item.peer.name}: {result.texts_per_s:.1f} texts/s")
        for item in running:
            parts = tree_pss(item.live.proc.pid)
            rows[item.peer.name].update(pss_mb=round(sum(parts.values()), 1), pss_parts_mb=parts)
    finally:
        for item in running:
            if item.server is not None:
                item.server.stop()
    # once more now that the servers are gone: the better of the two is kept, so that a moment of other load
    # at one of them does not decide (the servers share the machine's drift by taking each shape in turn)
    encode_in_process(in_process, rows, texts, setup.model_path, workdir)
    shutil.rmtree(workdir, ignore_errors=True)
    report["load_average_end"] = os.getloadavg()
    report["rows"] = list(rows.values())
    table = render(report)
    out = args.out or RESULTS / f"peers-{dt.datetime.now():%Y%m%d-%H%M%S}.json"
    out.write_text(json.dumps({**report, "table": table}, indent=2), encoding="utf-8")
    print(table)
    print(f"\nJSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
