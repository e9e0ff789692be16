"""A change measured against the code before it, side by side in one run:

    python bench/ab.py [--base REV] [--rounds N] [--texts N] [--light N] [--model ID_OR_PATH] [--arg ARG ...]

``base`` runs revision ``REV`` (default ``HEAD``: the working tree's uncommitted change against its last
commit), exported with ``git archive`` into a temporary directory; ``this`` runs the working tree. Both run
``embed-cluster up`` with ``--arg`` added, at once, and are measured side by side (bench/side_by_side.py: the
p50 of a lone long text, texts/s in the three shapes of bench/load.py for ``--rounds`` rounds, PSS loaded,
after the shapes and idle). A shape's rounds vary by several percent on a 2-core machine: judge a change by
its mean over rounds that alternate, and rerun before trusting a difference of that size.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `python bench/ab.py` from anywhere

from bench import corpus, procs
from bench.engines import cpu_name
from bench.run import DEFAULT_MODEL
from bench.side_by_side import Tree, measure, table


def export(rev: str, into: Path) -> str:
    """Revision ``rev`` of this checkout's files under ``into``; its short commit id."""
    commit = subprocess.run(["git", "rev-parse", "--short", rev], cwd=procs.ROOT, check=True, capture_output=True,
                            text=True).stdout.strip()
    archive = subprocess.run(["git", "archive", "--format=tar", commit], cwd=procs.ROOT, check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return commit


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="HEAD", help="the revision to compare with (default HEAD)")
    parser.add_argument("--texts", type=int, default=256, help="texts per shape (default 256)")
    parser.add_argument("--rounds", type=int, default=4, help="rounds of the three shapes (default 4)")
    parser.add_argument("--light", type=int, default=40, help="lone texts to each (default 40)")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--arg", action="append", default=[], help="an argument added to both `up`s")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    texts = [row["text"] for row in corpus.load(args.texts)]
    with tempfile.TemporaryDirectory(prefix="bench-ab-") as tmp:
        commit = export(args.base, Path(tmp))
        trees = [Tree(f"base {commit}", args.arg, Path(tmp)), Tree("this tree", args.arg)]
        results = measure(trees, args.model, texts, args.rounds, args.light)
    engine = results["this tree"].health["workers"][0]
    print(f"{cpu_name()}, {os.cpu_count()} CPUs; {engine['backend']} {engine['precision']}; {len(texts)} texts a "
          f"shape, {args.rounds} rounds; lone: {args.light} long texts; up {' '.join(args.arg) or '(defaults)'}")
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
