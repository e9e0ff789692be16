"""The front's vector cache: what was embedded once is answered from disk, without a worker.

:meth:`FrontCache.embed` stands in the one path every embedding route takes to the broker (AppState.embed).
It looks each text up under :func:`entry_key`, sends only the misses to the workers, answers in the original
order, and queues the misses' rows to be written (embed_common/vector_cache.py, off the request's path).

- **Key.** A digest of the model's fingerprint (a digest of its files, sent by each worker: worker/cache.py
  ``weights_fingerprint``), the :func:`recipe` (every job option that changes the vector, and ``normalize``),
  and the text. A job option (embed_common/protocol.py JobOptions) is in the recipe unless :data:`PRESENTATION`
  names it (it changes how rows are written, not what they are): a new option (a model, a prompt) is keyed
  without a line here. A chunked request's entry is a text's chunks: their spans and their vectors.
- **Which fingerprint.** A lookup uses the fingerprints of the workers serving now (any of their vectors is
  what a live worker could answer); a row is written under the fingerprint of the worker that computed it (the
  RESULT carries it). No worker serving, or a worker without one, and nothing is looked up or written.
- **Bit-identical.** Rows are stored as the JSON text the worker wrote (each number the shortest text of its
  float32: it reads back to that float32 exactly), so a hit in JSON is the first answer's bytes, and in
  float32 its very values; nothing is written again per number on a hit.
"""

from __future__ import annotations

import contextvars
import hashlib
import logging
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import falcon
import numpy as np
import orjson
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from embed_common import protocol
from embed_common.cache_dir import cache_root
from embed_common.errors import ErrorCode
from embed_common.protocol import Encoding, JobOptions
from embed_common.status import BrokerStatus
from embed_common.vector_cache import Entry, Row, VectorStore
from http_front.broker_client import EmbedResult, too_long_error
from http_front.errors import ApiError

log = logging.getLogger(__name__)

CACHE_HEADER = "X-Embed-Cache"  # "off": this request neither reads nor writes the cache (the body's cache: false)
HITS_HEADER = "X-Embed-Cache-Hits"  # on an answer: "HITS/LOOKED_UP", its texts found in the cache of those looked up
# this request's [hits, texts looked up], set by CacheHitsHeader for the request's thread
LOOKUPS: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar("cache_lookups", default=None)
PRESENTATION = frozenset({"encoding"})  # job options that change how the rows are written, not the vectors


def recipe(normalize: bool, options: JobOptions) -> bytes:
    """The options that decide a text's vectors (its chunks' too), as canonical bytes: a part of every key."""
    deciding = {k: v for k, v in options.wire().items() if k not in PRESENTATION}
    return orjson.dumps({**deciding, "normalize": normalize}, option=orjson.OPT_SORT_KEYS)


def entry_key(fingerprint: str, recipe_bytes: bytes, text: str) -> bytes:
    key = hashlib.blake2b(digest_size=16)
    key.update(fingerprint.encode())
    key.update(b"\0")
    key.update(recipe_bytes)
    key.update(b"\0")
    key.update(text.encode("utf-8", "surrogatepass"))
    return key.digest()


def model_dim(status: BrokerStatus | None, alias: str | None) -> int:
    """The dimensions of model ``alias``'s vectors (None: the default model's; 0: not known yet)."""
    if status is None:
        return 0
    pool = next((m for m in status.models if m.get("alias") == alias), None) if alias is not None else None
    dim = pool.get("dim") if pool is not None else status.dim
    return dim if isinstance(dim, int) else 0


def serving_fingerprints(status: BrokerStatus | None, alias: str | None = None) -> list[str]:
    """The model fingerprints of the workers of model ``alias``'s pool serving now (None: the default model's,
    the status's first); none when any of them has none."""
    if status is None:
        return []
    if alias is None and status.models:
        alias = status.models[0].get("alias")
    workers = status.workers_of(alias) if alias is not None else status.workers
    if not workers:
        return []
    prints = [w.get("fingerprint") for w in workers]
    if not all(isinstance(p, str) and p for p in prints):
        return []
    return sorted(set(prints))  # type: ignore[arg-type]


def cache_path(setting: str) -> Path | None:
    """The file ``--cache`` names: ``on`` (the default), the user's cache directory's; ``off``, none."""
    if setting == "off":
        return None
    return cache_root("vectors") / "vectors.sqlite" if setting == "on" else Path(setting).expanduser()


def open_cache(setting: str, max_bytes: int) -> FrontCache | None:
    """The front's cache as ``--cache`` says; None when off, or when the file cannot be opened (logged: the
    front serves without it)."""
    path = cache_path(setting)
    if path is None:
        return None
    try:
        store = VectorStore(path, max_bytes)
    except (OSError, sqlite3.Error) as exc:
        log.error("vector cache %s cannot be opened (serving without it): %s", path, exc)
        return None
    log.info("vector cache: %s (at most %d bytes)", path, max_bytes)
    return FrontCache(store)


def header_allows(value: str | None) -> bool:
    """Whether a request's CACHE_HEADER lets it use the cache (``on``, the default, or ``off``)."""
    if value is None or value.strip().lower() == "on":
        return True
    if value.strip().lower() == "off":
        return False
    raise ApiError("BAD_REQUEST", f"the {CACHE_HEADER} header must be 'on' or 'off'")


Compute = Callable[[list[str]], EmbedResult]


@dataclass
class TextRows:
    """One text's part of an answer: its rows (float32 vectors, or JSON texts as a worker wrote them), its chunks'
    spans (chunked requests), its tokens, and whether it was truncated."""

    rows: list[Any]
    spans: list[tuple[int, int]] | None
    tokens: int
    truncated: bool
    fingerprint: str | None = None
    hit: bool = False

    @classmethod
    def of(cls, entry: Entry) -> TextRows:
        if entry.spans is None:  # one row: "[[...]]"
            return cls([entry.vectors[1:-1]], None, entry.tokens, entry.truncated, hit=True)
        spans = [(int(a), int(b)) for a, b in entry.spans]
        return cls(_split(entry.vectors), spans, entry.tokens, entry.truncated, hit=True)


class FrontCache:
    def __init__(self, store: VectorStore) -> None:
        self.store = store

    def stats(self) -> dict[str, int]:
        return self.store.stats()

    def close(self) -> None:
        self.store.close()

    def embed(self, texts: list[str], normalize: bool, options: JobOptions, status: BrokerStatus | None,
              alias: str | None, compute: Compute) -> EmbedResult:
        """``texts``' result for model ``alias`` (None: the default), hits from the store and the rest from
        ``compute`` (the broker), in order."""
        recipe_bytes = recipe(normalize, options)
        fingerprints = serving_fingerprints(status, alias)
        if not fingerprints:
            return compute(texts)
        dim = model_dim(status, alias)  # only an answer of no rows at all reads it
        chunked = options.chunk is not None
        keys = {fp: [entry_key(fp, recipe_bytes, t) for t in texts] for fp in fingerprints}
        found = self.store.get([k for ks in keys.values() for k in ks])
        hits: list[Entry | None] = [None] * len(texts)
        for fp in fingerprints:
            for i, key in enumerate(keys[fp]):
                if hits[i] is None and (entry := found.get(key)) is not None and (entry.spans is not None) == chunked:
                    hits[i] = entry
        misses = [i for i, hit in enumerate(hits) if hit is None]
        counted = LOOKUPS.get()
        if counted is not None:
            counted[0] += len(texts) - len(misses)
            counted[1] += len(texts)
        if len(misses) == len(texts):  # all misses: the broker's answer as it is
            result = compute(texts)
            self._remember(texts, result, recipe_bytes, chunked)
            return result
        computed: EmbedResult | None = None
        parts: list[TextRows | None] = [None if hit is None else TextRows.of(hit) for hit in hits]
        if misses:
            miss_texts = [texts[i] for i in misses]
            try:
                computed = compute(miss_texts)
            except ApiError as exc:
                if exc.code != ErrorCode.INPUT_TOO_LONG:
                    raise
                raise too_long_error([misses[int(i)] for i in exc.details.get("indices", [])],
                                     exc.details.get("max_tokens")) from None
            fresh = per_text(computed, len(misses), chunked)
            self._remember(miss_texts, computed, recipe_bytes, chunked, fresh)
            for i, rows in zip(misses, fresh, strict=True):
                parts[i] = rows
        return answer(parts, computed, dim, chunked)  # type: ignore[arg-type]

    def _remember(self, texts: list[str], result: EmbedResult, recipe_bytes: bytes, chunked: bool,
                  parts: list[TextRows] | None = None) -> None:
        """Queue the computed texts' rows to be written under their workers' fingerprints. The rows are
        grouped by text (``parts``, when the answer needed them already), keyed and joined on the writer thread,
        off the request's path."""

        def entries() -> list[Row]:  # on the writer thread
            grouped = parts if parts is not None else per_text(result, len(texts), chunked)
            if len(result.row_tokens) != sum(len(p.rows) for p in grouped):
                return []  # a worker that does not say its rows' tokens: nothing written
            made = []
            for text, part in zip(texts, grouped, strict=True):
                if not part.fingerprint or not part.rows or (part.spans is not None and part.truncated):
                    continue  # rows of no one model, no rows, or a chunk cut at the limit: not kept
                spans = None if part.spans is None else np.array(part.spans, dtype=np.int32).reshape(-1, 2)
                made.append((entry_key(part.fingerprint, recipe_bytes, text),
                             Entry(_join([_json_row(r) for r in part.rows]), part.tokens, part.truncated, spans)))
            return made

        self.store.put_later(entries, len(texts))


def per_text(result: EmbedResult, count: int, chunked: bool) -> list[TextRows]:
    """``result``'s rows grouped by the text they belong to (one each, or its chunks'), in order."""
    rows = _rows(result)
    truncated = set(result.truncated)
    tokens = result.row_tokens if len(result.row_tokens) == len(rows) else [0] * len(rows)
    prints = result.row_fingerprints if len(result.row_fingerprints) == len(rows) else [None] * len(rows)
    parts = [TextRows([], [] if chunked else None, 0, False) for _ in range(count)]
    owners = [int(c[0]) for c in result.chunks] if chunked else list(range(len(rows)))
    for r, (row, owner) in enumerate(zip(rows, owners, strict=True)):
        part = parts[owner]
        part.rows.append(row)
        if part.spans is not None:
            part.spans.append((int(result.chunks[r][1]), int(result.chunks[r][2])))
        part.tokens += tokens[r]
        part.truncated = part.truncated or r in truncated
        if len(part.rows) == 1:
            part.fingerprint = prints[r]
        elif part.fingerprint != prints[r]:  # rows from workers of other models: not written
            part.fingerprint = None
    return parts


def answer(parts: list[TextRows], computed: EmbedResult | None, dim: int, chunked: bool) -> EmbedResult:
    """The request's result in order: runs of hits as float32 parts, runs of computed rows as the workers wrote
    them (their JSON text itself, when they wrote JSON)."""
    result = EmbedResult()
    if computed is not None:
        result.timings = dict(computed.timings)
    run: list[Any] = []
    run_hit: bool | None = None
    row = 0
    for i, part in enumerate(parts):
        if run and part.hit != run_hit and part.rows:
            result.parts.append(_part(run))
            result.dims.append(dim)
            run = []
        if part.rows:
            run_hit = part.hit
        run.extend(part.rows)
        result.tokens += part.tokens
        if part.truncated and not chunked:
            result.truncated.append(row)
        if part.spans is not None:
            result.chunks.extend([i, start, end] for start, end in part.spans)
        row += len(part.rows)
    if run or not result.parts:
        result.parts.append(_part(run) if run else np.zeros((0, dim), np.float32))
        result.dims.append(dim)
    return result


def _part(rows: list[Any]) -> np.ndarray | bytes:
    return np.stack(rows) if isinstance(rows[0], np.ndarray) else _join(rows)


def _join(rows: list[bytes]) -> bytes:
    """JSON rows ``[...]`` as one JSON array of them."""
    return b"[" + b",".join(rows) + b"]"


def _split(rows: bytes | memoryview) -> list[bytes]:
    """A JSON array of rows ``[[...],...]`` as its rows ``[...]`` (their text as it is)."""
    inner = bytes(memoryview(rows)[2:-2])
    return [b"[" + row + b"]" for row in inner.split(b"],[")] if inner else []


def _json_row(row: np.ndarray | bytes) -> bytes:
    return row if isinstance(row, bytes) else protocol.encode_vectors(row[None, :], Encoding.JSON)[1:-1]


def _rows(result: EmbedResult) -> list[Any]:
    """Each row of ``result``: a float32 vector, or its JSON text ``[...]`` as the worker wrote it."""
    rows: list[Any] = []
    for part in result.parts:
        rows.extend(part if isinstance(part, np.ndarray) else _split(part))
    return rows


class CacheHitsHeader:
    """Middleware: an answer that looked texts up in the cache says how many it found (HITS_HEADER)."""

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        LOOKUPS.set([0, 0])

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource: object,
                         req_succeeded: bool) -> None:
        counted = LOOKUPS.get()
        if counted and counted[1]:
            resp.set_header(HITS_HEADER, f"{counted[0]}/{counted[1]}")
        LOOKUPS.set(None)


class CacheCollector(Collector):
    """The cache's counters and size for /metrics, read at scrape time."""

    def __init__(self, cache: FrontCache) -> None:
        self.cache = cache

    def collect(self) -> Iterator[Metric]:
        stats = self.cache.stats()
        for name, text in (("hits", "texts answered from the vector cache"),
                           ("misses", "texts looked up and not found (sent to the workers)"),
                           ("writes", "vectors written to the cache by this front"),
                           ("evictions", "vectors evicted from the cache file (least recently used first)"),
                           ("dropped", "vectors not written (the write queue was full, or a write failed)"),
                           ("bad_rows", "cached rows that failed their check (deleted, computed again)"),
                           ("rebuilds", "times the cache file was found damaged, moved aside and started anew")):
            yield CounterMetricFamily(f"embed_cache_{name}", text, value=stats[name])
        yield GaugeMetricFamily("embed_cache_entries", "vectors in the cache file", value=stats["entries"])
        yield GaugeMetricFamily("embed_cache_bytes", "the cache's accounted size (rows and their overhead)",
                                value=stats["bytes"])
        yield GaugeMetricFamily("embed_cache_max_bytes", "the cache's bound (--cache-max-bytes)",
                                value=stats["max_bytes"])
