"""OpenVINO's two ways of running a pass, side by side in one run (worker/openvino_backend.py):

    python bench/streams.py [--texts N] [--rounds N] [--light N] [--model ID_OR_PATH]

- ``beside``: ``embed-cluster up --backend openvino`` as it runs by default: a pass that runs alone takes every
  core, and passes under load run beside each other, one stream a compute thread;
- ``alone``: the same with ``--compute-threads 1``: one compute thread, every pass alone on every core (what a
  worker did before the streams, but for its second compute thread preparing the next batch meanwhile).

Both run at once and are measured side by side (bench/side_by_side.py: a lone long text, the three shapes,
PSS loaded, after the shapes and idle); the last column counts each worker's passes alone and beside.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `python bench/streams.py` from anywhere

from bench import corpus
from bench.engines import cpu_name
from bench.run import DEFAULT_MODEL
from bench.side_by_side import Tree, measure, table

WAYS = {"beside": [], "alone": ["--compute-threads", "1"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=256, help="texts per shape (default 256)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the three shapes (default 2)")
    parser.add_argument("--light", type=int, default=40, help="lone texts to each (default 40)")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    texts = [row["text"] for row in corpus.load(args.texts)]
    trees = [Tree(name, ["--backend", "openvino", *extra]) for name, extra in WAYS.items()]
    results = measure(trees, args.model, texts, args.rounds, args.light)
    precision = results["beside"].health["workers"][0]["precision"]
    print(f"{cpu_name()}, {os.cpu_count()} CPUs; OpenVINO {precision}; {len(texts)} texts a shape, "
          f"{args.rounds} rounds; lone: {args.light} long texts")
    print(table(results, "passes", lambda m: m.health["workers"][0].get("engine_passes")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
