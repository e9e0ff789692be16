"""OpenVINO's two ways of running a pass, side by side in one run (worker/openvino_backend.py):

    python bench/streams.py [--texts N] [--rounds N] [--light N] [--model ID_OR_PATH]

- ``beside``: ``embed-cluster up --backend openvino`` as it runs by default: a pass that runs alone takes every
  core, and passes under load run beside each other, one stream a compute thread;
- ``alone``: the same with ``--compute-threads 1``: one compute thread, every pass alone on every core (what a
  worker did before the streams, but for its second compute thread preparing the next batch meanwhile).

Both clusters run at once; each measurement goes to one and then the other (the order turned every round), so
the machine's drift falls on both: the p50 of a lone long text (bench/peers.py's lone-text row), texts/s in
the three shapes of bench/load.py for ``--rounds`` rounds, and each tree's PSS loaded, after the shapes and
after a few idle seconds (the idle tidy gives the plugin's buffers back). Prints the CPU and the figures.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `python bench/streams.py` from anywhere

from bench import corpus, procs
from bench.engines import cpu_name
from bench.load import EMBED, SHAPES, interleaved_lone, run_shape
from bench.peers import long_texts
from bench.run import DEFAULT_MODEL

WAYS = {"beside": [], "alone": ["--compute-threads", "1"]}
IDLE_SECONDS = 3.0  # past the worker's idle tidy (worker/worker.py IDLE_TIDY)


def pss(server: procs.Server) -> float:
    return round(sum(u["pss_mb"] for u in procs.usage(server.proc.pid).values()), 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=256, help="texts per shape (default 256)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the three shapes (default 2)")
    parser.add_argument("--light", type=int, default=40, help="lone texts to each (default 40)")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    texts = [row["text"] for row in corpus.load(args.texts)]
    servers: dict[str, procs.Server] = {}
    with tempfile.TemporaryDirectory(prefix="bench-streams-") as tmp:
        try:
            for name, extra in WAYS.items():
                log_dir = Path(tmp) / name
                log_dir.mkdir()
                servers[name] = procs.start_cluster(args.model, ["--backend", "openvino", "--request-timeout", "300",
                                                                 *extra], log_dir)
            targets = {name: (server.port, EMBED) for name, server in servers.items()}
            lone = interleaved_lone(targets, long_texts(args.light), args.light)
            memory = {name: {"loaded": pss(server)} for name, server in servers.items()}
            rates: dict[str, dict[str, list[float]]] = {name: {s.name: [] for s in SHAPES} for name in servers}
            for round_ in range(args.rounds):
                for shape in SHAPES:
                    order = list(servers) if round_ % 2 == 0 else list(reversed(servers))
                    for name in order:
                        rates[name][shape.name].append(run_shape(servers[name].port, texts, shape).texts_per_s)
            for name, server in servers.items():
                memory[name]["after"] = pss(server)
            time.sleep(IDLE_SECONDS)
            for name, server in servers.items():
                memory[name]["idle"] = pss(server)
            passes = {name: procs.get_json(server.port, "/health")["workers"][0].get("engine_passes")
                      for name, server in servers.items()}
            precision = procs.get_json(servers["beside"].port, "/info")["workers"][0]["precision"]
        finally:
            for server in servers.values():
                server.stop()
    print(f"{cpu_name()}, {os.cpu_count()} CPUs; OpenVINO {precision}; {len(texts)} texts a shape, "
          f"{args.rounds} rounds; lone: {args.light} long texts")
    print(f"{'':8} {'lone p50 ms':>12} " + " ".join(f"{s.name:>24}" for s in SHAPES)
          + f" {'PSS MB loaded/after/idle':>26}  passes")
    for name in servers:
        cells = " ".join(f"{' / '.join(f'{r:.1f}' for r in rates[name][s.name]):>24}" for s in SHAPES)
        mem = memory[name]
        print(f"{name:8} {statistics.median(lone[name]):12.2f} {cells} "
              f"{mem['loaded']:>8.0f} / {mem['after']:.0f} / {mem['idle']:.0f}  {passes[name]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
