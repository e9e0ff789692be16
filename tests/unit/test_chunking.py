"""worker/chunking.py with a simple tokenizer (words and punctuation marks are tokens), and a chunked job through
the worker's compute thread with the fake embedder."""

from __future__ import annotations

import itertools
import random
import re
import socket

import numpy as np
import pytest

from embed_common.protocol import ChunkOption
from tests.conftest import eventually
from worker.chunking import ChunkPlan, chunk_spans, chunk_texts
from worker.embedder import FakeEmbedder
from worker.worker import ComputeThreads


def spans_of(text: str) -> list[tuple[int, int]]:
    return [m.span() for m in re.finditer(r"\w+|[^\w\s]", text)]


def token_ranges(text: str, chunks: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Each chunk as [first token, last token + 1)."""
    spans = spans_of(text)
    starts = {s: i for i, (s, _) in enumerate(spans)}
    ends = {e: i + 1 for i, (_, e) in enumerate(spans)}
    return [(starts[s], ends[e]) for s, e in chunks]


def check_invariants(text: str, chunks: list[tuple[int, int]], plan: ChunkPlan) -> None:
    n = len(spans_of(text))
    ranges = token_ranges(text, chunks)  # KeyError: a chunk that does not start or end on a token
    assert ranges[0][0] == 0 and ranges[-1][1] == n
    for (a, b), (c, d) in itertools.pairwise(ranges):
        assert c - a >= max(1, plan.tokens // 4) and b < d, "chunks move forward, by a quarter chunk at least"
        assert c <= b, "no token is skipped"
        assert b - c <= plan.overlap, "overlap within the plan"
    assert all(0 < b - a <= plan.tokens for a, b in ranges)


def sentences(count: int, words: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    vocabulary = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda".split()
    return [" ".join(rng.choice(vocabulary) for _ in range(words)).capitalize() + "." for _ in range(count)]


def test_short_text_is_one_chunk_without_surrounding_space() -> None:
    text = "  Hello, world.\n"
    assert chunk_spans(text, spans_of(text), ChunkPlan(10, 2)) == [(2, 15)]


@pytest.mark.parametrize("text", ["", "   \n\t  "])
def test_text_without_tokens_has_no_chunks(text: str) -> None:
    assert chunk_spans(text, spans_of(text), ChunkPlan(10, 2)) == []


def test_cuts_fall_on_sentence_ends() -> None:
    text = " ".join(sentences(20, 7))  # 8 tokens a sentence
    plan = ChunkPlan(20, 0)
    chunks = chunk_spans(text, spans_of(text), plan)
    check_invariants(text, chunks, plan)
    assert len(chunks) == 10  # two whole sentences (16 tokens) a chunk: a third does not fit in 20
    assert all(text[s:e].endswith(".") and text[s].isupper() for s, e in chunks)


def test_a_paragraph_break_wins_over_a_later_sentence_end() -> None:
    first, second = sentences(2, 5, seed=1), sentences(3, 5, seed=2)
    text = " ".join(first) + "\n\n" + " ".join(second)  # 12 tokens, a paragraph break, then 18
    chunks = chunk_spans(text, spans_of(text), ChunkPlan(20, 0))
    assert text[slice(*chunks[0])] == " ".join(first)


def test_overlap_repeats_whole_sentences_when_they_fit() -> None:
    text = " ".join(sentences(12, 4, seed=3))  # 5 tokens a sentence
    plan = ChunkPlan(16, 6)
    chunks = chunk_spans(text, spans_of(text), plan)
    check_invariants(text, chunks, plan)
    for (_, end), (start, _) in itertools.pairwise(chunks):
        assert start < end, "consecutive chunks overlap"
        assert text[start].isupper() and text[start - 2] == ".", "the overlap starts at a sentence"


def test_any_overlap_gives_a_bounded_number_of_chunks() -> None:
    text = "a. " * 400  # 800 tokens, a sentence end every other token: every cut and start is a strong break
    plan = ChunkPlan.from_option(ChunkOption(tokens=40, overlap=1000), 254)
    chunks = chunk_spans(text, spans_of(text), plan)
    check_invariants(text, chunks, plan)
    assert len(chunks) <= 4 * 800 // 40 + 1


def test_text_without_breaks_is_cut_at_the_window() -> None:
    text = "x" * 95
    spans = [(i, i + 1) for i in range(95)]  # a token per letter: every cut is inside a word
    assert chunk_spans(text, spans, ChunkPlan(10, 0)) == [(i, min(i + 10, 95)) for i in range(0, 95, 10)]


def test_words_are_not_split_when_spaces_exist() -> None:
    text = "word " * 30 + "end"
    spans = [(m.start(), m.end()) for m in re.finditer(r"w|o|r|d|e|n", text)]  # a token per letter
    chunks = chunk_spans(text, spans, ChunkPlan(9, 0))
    assert all(text[s:e].replace(" ", "").replace("word", "") in ("", "end") for s, e in chunks), chunks


@pytest.mark.parametrize("seed", range(30))
def test_invariants_on_random_texts(seed: int) -> None:
    rng = random.Random(seed)
    pieces = []
    for _ in range(rng.randint(0, 60)):
        pieces.append(rng.choice(["word", "Sentence.", "x", "\n", "\n\n", "!", "longerword", "日本語。"]))
    text = " ".join(pieces)
    tokens = rng.randint(1, 12)
    plan = ChunkPlan(tokens, rng.randint(0, tokens - 1))
    chunks = chunk_spans(text, spans_of(text), plan)
    if spans_of(text):
        check_invariants(text, chunks, plan)
    else:
        assert chunks == []


def test_chunk_texts_table_points_into_each_text() -> None:
    texts = [" ".join(sentences(6, 6, seed=4)), "", "Short one."]
    got, table = chunk_texts(texts, spans_of, ChunkPlan(15, 3))
    assert len(got) == len(table) > 2
    assert [row[0] for row in table] == sorted(row[0] for row in table)
    assert {row[0] for row in table} == {0, 2}
    for chunk, (index, start, end) in zip(got, table, strict=True):
        assert chunk == texts[index][start:end]


@pytest.mark.parametrize(
    ("options", "plan"),
    [({}, ChunkPlan(254, 31)), ({"tokens": 100}, ChunkPlan(100, 12)), ({"tokens": 1000}, ChunkPlan(254, 31)),
     ({"tokens": 50, "overlap": 0}, ChunkPlan(50, 0)), ({"overlap": 10}, ChunkPlan(254, 10)),
     ({"tokens": 10, "overlap": 30}, ChunkPlan(10, 9))],
)
def test_plan_defaults_and_cap(options: dict, plan: ChunkPlan) -> None:
    assert ChunkPlan.from_option(ChunkOption.read(options), 254) == plan


@pytest.mark.parametrize(
    ("options", "mentions"),
    [([], "object"), ({"tokens": "5"}, "integer"), ({"tokens": True}, "integer"), ({"tokens": 0}, "at least 1"),
     ({"overlap": -1}, "at least 0")],
)
def test_the_chunk_option_rejects_bad_values(options: object, mentions: str) -> None:
    with pytest.raises(ValueError, match=mentions):
        ChunkOption.read(options)  # the option's one check: embed_common/protocol.py


def run_jobs(embedder: FakeEmbedder, headers: list[dict]) -> dict[str, tuple]:
    wake_r, wake_w = socket.socketpair()
    compute = ComputeThreads(embedder, token_budget=4096, max_batch=64, wake=wake_w)
    compute.start()
    try:
        for header in headers:
            compute.submit(header)
        eventually(lambda: len(compute.done) >= len(headers), "the compute thread finished the jobs", timeout=30,
                   interval=0.01)
        return {job.job_id if job is not None else error["job"]: (job, error) for job, error in compute.done}
    finally:
        compute.stop()
        wake_r.close()
        wake_w.close()


def test_a_chunked_job_embeds_each_chunk_like_a_plain_job() -> None:
    embedder = FakeEmbedder(dim=8, max_tokens=12)  # 10 tokens a chunk at most
    texts = [" ".join(sentences(5, 4, seed=5)), "   ", "tiny"]
    chunk = {"job": "c", "attempt": 0, "texts": texts, "normalize": True,
             "options": {"chunk": {"tokens": 50, "overlap": 2}}}
    done = run_jobs(embedder, [chunk])
    job, error = done["c"]
    assert error is None
    chunk_texts_ = [texts[i][s:e] for i, s, e in job.chunks]
    assert [i for i, _, _ in job.chunks] == [0, 0, 0, 2]
    assert all(len(c.split()) <= 10 for c in chunk_texts_)
    plain = run_jobs(embedder, [{"job": "p", "attempt": 0, "texts": chunk_texts_, "normalize": True}])["p"][0]
    assert np.allclose(job.vectors, plain.vectors)


def test_a_chunked_job_without_tokens_finishes_empty_and_bad_options_fail() -> None:
    embedder = FakeEmbedder(dim=8, max_tokens=12)
    done = run_jobs(embedder, [
        {"job": "empty", "attempt": 0, "texts": ["", "  "], "normalize": True, "options": {"chunk": {}}},
        {"job": "bad", "attempt": 0, "texts": ["a b"], "normalize": True, "options": {"chunk": {"overlap": -1}}},
    ])
    job, error = done["empty"]
    assert error is None and job.chunks == [] and job.vectors.shape == (0, 8)
    job, error = done["bad"]
    assert job is None and error["code"] == "BAD_REQUEST" and "overlap" in error["message"]
