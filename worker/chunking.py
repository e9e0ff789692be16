"""Split texts into chunks of at most N tokens, cut where the text breaks best, with overlap.

The model's tokenizer gives each token's character span in the text (:meth:`Embedder.token_spans`). A chunk
is a run of whole tokens: it starts at its first token's first character and ends at its last token's last
character, so its text is ``text[start:end]``. Each cut is placed, within the second half of the chunk's
token window, at the strongest break found there (paragraph > sentence > line > word > inside a word), the
latest of equal strength; the next chunk starts up to ``overlap`` tokens before the cut, at the strongest
break there, the earliest of equal strength (so the overlap holds whole sentences when it can), but at least
a quarter of the chunk size after the chunk before it: whatever the text and the overlap, a text of n tokens
gives at most about 4n/N chunks.

Pure and model-free: the tokenizer comes in as a function, so tests run on a simple one.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

from embed_common.protocol import ChunkOption

Span = tuple[int, int]  # [start, end) character offsets

INSIDE_WORD, WORD, LINE, SENTENCE, PARAGRAPH = range(5)

# ideographic full stop, fullwidth ! and ?: written with escapes, they look like ASCII ones
WIDE_SENTENCE_ENDS = set("\u3002\uff01\uff1f")
SENTENCE_ENDS = set(".!?\u2026") | WIDE_SENTENCE_ENDS
CLOSERS = set("\"')]}\u00bb\u201d\u2019\u300d\u300f")


@dataclass(frozen=True)
class ChunkPlan:
    """How to chunk: at most ``tokens`` tokens a chunk, up to ``overlap`` of them shared with the previous."""

    tokens: int
    overlap: int

    @staticmethod
    def from_option(option: ChunkOption, limit: int) -> ChunkPlan:
        """The plan for a job's ``chunk`` option (checked already: embed_common/protocol.py) within the model's
        ``limit``: ``tokens`` defaults to ``limit`` and is capped by it; ``overlap`` defaults to an eighth of
        ``tokens`` and is capped at ``tokens - 1``."""
        tokens = max(1, limit if option.tokens is None else min(option.tokens, limit))
        overlap = tokens // 8 if option.overlap is None else option.overlap
        return ChunkPlan(tokens, min(overlap, tokens - 1))


def break_strength(text: str, spans: list[Span], k: int) -> int:
    """How well ``text`` breaks between token ``k - 1`` and token ``k``."""
    before_end, after_start = spans[k - 1][1], spans[k][0]
    gap = text[before_end:after_start]
    if gap.count("\n") >= 2:
        return PARAGRAPH
    tail = text[max(0, before_end - 8):before_end].rstrip("".join(CLOSERS))
    if tail and tail[-1] in SENTENCE_ENDS and (gap or tail[-1] in WIDE_SENTENCE_ENDS):
        return SENTENCE
    if "\n" in gap:
        return LINE
    if gap or _separates(text[before_end - 1:before_end]) or _separates(text[after_start:after_start + 1]):
        return WORD
    return INSIDE_WORD


def _separates(char: str) -> bool:
    """Punctuation, symbols and wide (CJK) characters are words of their own to a tokenizer."""
    return bool(char) and (not char.isalnum() or unicodedata.east_asian_width(char) in ("W", "F"))


def chunk_spans(text: str, spans: list[Span], plan: ChunkPlan) -> list[Span]:
    """The chunks of ``text``, given its tokens' character ``spans`` (in order, no special tokens)."""
    n = len(spans)
    chunks: list[Span] = []
    start = 0
    last_cut = 0
    while start < n:
        window_end = min(start + plan.tokens, n)
        if window_end == n:
            cut = n
        else:
            lowest = min(max(start + max(1, plan.tokens // 2), last_cut + 1), window_end)
            cut = max(range(lowest, window_end + 1), key=lambda k: (break_strength(text, spans, k), k))
        chunks.append((spans[start][0], spans[cut - 1][1]))
        if cut == n:
            break
        last_cut = cut
        if plan.overlap == 0:
            start = cut
        else:
            earliest = max(start + max(1, plan.tokens // 4), cut - plan.overlap)
            start = max(range(earliest, cut), key=lambda k: (break_strength(text, spans, k), -k), default=cut)
    return chunks


def chunk_texts(texts: list[str], token_spans: Callable[[str], list[Span]],
                plan: ChunkPlan) -> tuple[list[str], list[list[int]]]:
    """Every text's chunks, in order: their texts, and a table of ``[text_index, start, end]`` rows."""
    chunk_texts_: list[str] = []
    table: list[list[int]] = []
    for index, text in enumerate(texts):
        for start, end in chunk_spans(text, token_spans(text), plan):
            chunk_texts_.append(text[start:end])
            table.append([index, start, end])
    return chunk_texts_, table
