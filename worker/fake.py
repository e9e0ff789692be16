"""A worker process that serves the fake embedder (worker/embedder.py's FakeEmbedder): no model, no torch.

    python -m worker.fake --broker ipc:///tmp/x/workers.ipc [--dim 384] [--worker-id fake-0]

For the head-node benchmark (bench/head.py), which needs workers that cost next to nothing, in their own
processes, over the real sockets; not an ``embed-cluster`` command.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence

from worker.embedder import FakeEmbedder
from worker.worker import WorkerLoop, WorkerSettings


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker.fake", description=__doc__)
    parser.add_argument("--broker", required=True, help="the broker's worker address")
    parser.add_argument("--dim", type=int, default=384, help="vector dimensions")
    parser.add_argument("--max-tokens", type=int, default=128, help="tokens a text at most (one a word)")
    parser.add_argument("--worker-id", default="", help="name shown in /health")
    parser.add_argument("--capacity", type=int, default=0, help="texts in flight (0: by device)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    embedder = FakeEmbedder(dim=args.dim, max_tokens=args.max_tokens, model_id="fake/fake-model")
    settings = WorkerSettings(broker=args.broker, worker_id=args.worker_id, capacity=args.capacity)
    loop = WorkerLoop(settings, embedder, {"model_name": "fake-model"})
    signal.signal(signal.SIGTERM, lambda signum, frame: loop.stop())
    signal.signal(signal.SIGINT, lambda signum, frame: loop.stop())
    return loop.run()


if __name__ == "__main__":
    sys.exit(main())
