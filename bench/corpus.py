"""The benchmark's texts: bench/corpus.jsonl (built by bench/make_corpus.py, whose docstring names the sources).

``load(n)`` takes ``n`` texts with the corpus's own mix of kinds (short queries, runs of sentences, long
paragraphs and passages), in the corpus's shuffled order, so that every measurement of a run sees the same
texts and any ``n`` has about the same length profile.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

CORPUS = Path(__file__).resolve().parent / "corpus.jsonl"


def rows() -> list[dict[str, str]]:
    with CORPUS.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load(n: int | None = None) -> list[dict[str, str]]:
    """``n`` rows (all when None), each kind in proportion to its share of the corpus."""
    everything = rows()
    if n is None or n >= len(everything):
        return everything
    by_kind: dict[str, list[int]] = defaultdict(list)
    for i, row in enumerate(everything):
        by_kind[row["kind"]].append(i)
    keep: list[int] = []
    for indices in by_kind.values():
        keep += indices[: max(1, round(n * len(indices) / len(everything)))]
    keep.sort()
    return [everything[i] for i in keep[:n]]


def describe(selected: list[dict[str, str]]) -> str:
    kinds: dict[str, int] = defaultdict(int)
    for row in selected:
        kinds[row["kind"]] += 1
    langs = len({row["lang"] for row in selected})
    chars = sum(len(row["text"]) for row in selected) / max(1, len(selected))
    mix = ", ".join(f"{count} {kind}" for kind, count in sorted(kinds.items()))
    return f"{len(selected)} texts ({mix}), {langs} languages, {chars:.0f} characters on average"
