"""``embed-cluster embed PATH... -o OUT``: embed files through a running cluster, resumably, with progress.

Files (embed_client/bulk_sources.py) go to the cluster a few at a time through :class:`EmbedClient` and are
committed to the output folder in order, a whole file at a time (embed_client/bulk_store.py); a run that
was stopped, killed or cut off resumes with the files it had not committed. A file that the server refuses
(a PDF that is encrypted, corrupt or too large: a 4xx) or that cannot be read is skipped, reported, and
tried again by a later run only if it has changed. A cluster that fails or cannot be reached (after the
client's retries) stops the run. SIGINT or SIGTERM stops it once the files in flight are committed; a
second one ends it at once.

Progress: a bar on stderr (input bytes, texts/s, ETA), and a ``PROGRESS:`` line on stdout per file.
"""

from __future__ import annotations

import logging
import signal
import sys
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from embed_client.bulk_sources import Source, SourceError, find_sources, read_jsonl, read_text, split_text
from embed_client.bulk_store import Store, StoreError
from embed_client.client import HTTP_ERROR, EmbedClient, EmbedError
from embed_common import progress
from embed_common.exits import ExitCode
from embed_common.settings import default

log = logging.getLogger(__name__)

REQUEST_CHARS = 50_000  # characters of text a /embed/chunks request carries at most: a few seconds of work


@dataclass(frozen=True)
class BulkSettings:
    paths: tuple[str, ...]
    out: Path
    url: str = default("url", "embed")
    format: str = default("format", "embed")
    chunk_tokens: int | None = default("chunk-tokens", "embed")
    overlap_tokens: int | None = default("overlap-tokens", "embed")
    normalize: bool = True
    concurrency: int = default("concurrency", "embed")  # files in flight
    timeout: float = default("timeout", "embed")  # seconds a request may take (the server's is usually shorter)
    api_key: str | None = None
    progress_bar: bool = True


@dataclass
class FileRows:
    metadata: list[dict[str, Any]]
    vectors: np.ndarray
    error: str | None = None  # why the file was skipped


class Stop:
    """The signal handler: asks the loop to stop after the files in flight, and gives the signals their default
    action back, so that a second one ends the process at once (what is committed stays committed)."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum: int, frame: object) -> None:
        self.requested = True
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)


def embed_file(client: EmbedClient, source: Source, settings: BulkSettings, dim: int,
               max_chars: int) -> FileRows:
    """One file's rows; a file the server refuses or that cannot be read comes back with ``error``."""
    try:
        return FileRows(*_embed(client, source, settings, dim, max_chars))
    except SourceError as exc:
        return FileRows([], np.zeros((0, dim), np.float32), str(exc))
    except OSError as exc:
        return FileRows([], np.zeros((0, dim), np.float32), f"{source.path}: {exc.strerror or exc}")
    except EmbedError as exc:
        if exc.kind == HTTP_ERROR and exc.status is not None and 400 <= exc.status < 500 and exc.status != 401:
            return FileRows([], np.zeros((0, dim), np.float32), f"{source.path}: {exc.code}: {exc.message}")
        raise


def _embed(client: EmbedClient, source: Source, settings: BulkSettings, dim: int,
           max_chars: int) -> tuple[list[dict[str, Any]], np.ndarray]:
    def row(start: int, end: int, text: str, page: int | None = None, line: int | None = None) -> dict[str, Any]:
        return {"source": str(source.path), "page": page, "line": line, "start": start, "end": end, "text": text}

    options = {"chunk_tokens": settings.chunk_tokens, "overlap_tokens": settings.overlap_tokens,
               "normalize": settings.normalize}
    metadata: list[dict[str, Any]] = []
    vectors: list[list[float]] = []
    if source.kind == "pdf":
        body = client.embed_pdf(source.path.read_bytes(), **options)
        metadata = [row(c["start"], c["end"], c["text"], page=c["page"]) for c in body["chunks"]]
        vectors = body["vectors"]
    elif source.kind == "jsonl":
        records = read_jsonl(source.path)
        vectors = client.embed([text for _, text in records], settings.normalize)
        metadata = [row(0, len(text), text, line=number) for number, text in records]
    else:
        pieces = split_text(read_text(source.path), max_chars)
        for group in _groups(pieces, REQUEST_CHARS):
            body = client.embed_chunks([text for _, text in group], **options)
            for chunk in body["chunks"]:
                offset = group[chunk["index"]][0]
                metadata.append(row(offset + chunk["start"], offset + chunk["end"], chunk["text"]))
            vectors.extend(body["vectors"])
    return metadata, np.asarray(vectors, dtype=np.float32).reshape(len(metadata), dim)


def _groups(pieces: list[tuple[int, str]], max_chars: int) -> list[list[tuple[int, str]]]:
    groups: list[list[tuple[int, str]]] = []
    size = 0
    for piece in pieces:
        if not groups or size + len(piece[1]) > max_chars:
            groups.append([])
            size = 0
        groups[-1].append(piece)
        size += len(piece[1])
    return groups


def run(settings: BulkSettings) -> int:
    """Embed every file under ``settings.paths`` into ``settings.out``; the process exit code."""
    client = EmbedClient(settings.url, timeout=settings.timeout, retry_attempts=4, api_key=settings.api_key)
    try:
        info = client.info()
        sources = find_sources(list(settings.paths), settings.out)
    except (EmbedError, SourceError) as exc:
        log.error("%s", exc)
        return ExitCode.USAGE
    dim = info.get("dim")
    if not isinstance(dim, int):
        log.error("the cluster at %s has no worker yet (see its /health); try again when it is ready", settings.url)
        return ExitCode.USAGE
    limits = info.get("limits") or {}
    max_chars = min(int(limits.get("max_text_chars") or REQUEST_CHARS), REQUEST_CHARS)
    try:
        store = Store(settings.out, {"format": settings.format, "dim": dim, "model": info.get("model_id"),
                                     "chunk_tokens": settings.chunk_tokens, "overlap_tokens": settings.overlap_tokens,
                                     "normalize": settings.normalize})
    except StoreError as exc:
        log.error("%s", exc)
        return ExitCode.USAGE
    try:
        return _run(client, settings, store, sources, dim, max_chars)
    finally:
        store.close()


def _run(client: EmbedClient, settings: BulkSettings, store: Store, sources: list[Source], dim: int,
         max_chars: int) -> int:
    todo, skipped = [], []
    for source in sources:
        entry = store.finished.get(source.key)
        if entry is None or (entry.get("error") and source.changed_since(entry)):
            todo.append(source)
        elif entry.get("error"):
            skipped.append(entry["error"])
        elif source.changed_since(entry):
            log.warning("%s changed since it was embedded; its rows are of the old version (write to another "
                        "folder to embed it again)", source.path)
    done_bytes = sum(s.size for s in sources) - sum(s.size for s in todo)
    stop = Stop()
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    bar = tqdm(total=sum(s.size for s in sources), initial=done_bytes, unit="B", unit_scale=True,
               desc="embedding", disable=not settings.progress_bar, file=sys.stderr, dynamic_ncols=True)
    started, new_rows, files_done = time.monotonic(), 0, len(sources) - len(todo)
    pending: deque[tuple[Source, Future[FileRows]]] = deque()
    queue = iter(todo)
    try:
        with logging_redirect_tqdm(), ThreadPoolExecutor(settings.concurrency, "embed") as pool:
            while True:
                while not stop.requested and len(pending) < settings.concurrency:
                    source = next(queue, None)
                    if source is None:
                        break
                    pending.append((source, pool.submit(embed_file, client, source, settings, dim, max_chars)))
                if not pending:
                    break
                source, future = pending.popleft()
                try:
                    rows = future.result()
                except EmbedError as exc:
                    for _, other in pending:
                        other.cancel()
                    log.error("the cluster failed on %s: %s; run the same command again to resume", source.path,
                              exc)
                    return ExitCode.FAILED
                entry = {"source": str(source.path), "size": source.size, "mtime_ns": source.mtime_ns,
                         "error": rows.error}
                store.commit(source.key, entry, rows.metadata, rows.vectors)
                files_done += 1
                new_rows += len(rows.vectors)
                if rows.error:
                    skipped.append(rows.error)
                    log.warning("skipped %s", rows.error)
                rate = new_rows / max(time.monotonic() - started, 1e-9)
                bar.update(source.size)
                bar.set_postfix_str(f"{store.rows} texts, {rate:.1f} texts/s, {files_done}/{len(sources)} files")
                progress.emit("embed_file", {"file": str(source.path), "rows": len(rows.vectors),
                                             "error": rows.error, "files_done": files_done,
                                             "files_total": len(sources), "rows_total": store.rows,
                                             "texts_per_s": round(rate, 1)})
    finally:
        bar.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    interrupted = files_done < len(sources) and stop.requested
    hits, looked_up = client.cache_hits
    progress.emit("embed_finished", {"files_done": files_done, "files_total": len(sources), "rows": store.rows,
                                     "skipped": len(skipped), "interrupted": interrupted, "output": str(store.out),
                                     "cache_hits": hits, "cache_lookups": looked_up})
    if looked_up:
        log.info("the cluster's vector cache answered %d of %d texts (%.1f%%)", hits, looked_up,
                 100 * hits / looked_up)
    if interrupted:
        log.warning("stopped: %d of %d files are in %s; run the same command again to go on", files_done,
                    len(sources), store.out)
        return ExitCode.INTERRUPTED
    log.info("%d files, %d texts in %s (%s, metadata.jsonl)%s", len(sources), store.rows, store.out,
             store.vectors_path.name, f"; {len(skipped)} skipped" if skipped else "")
    for reason in skipped:
        log.warning("skipped %s", reason)
    return ExitCode.FAILED if skipped else ExitCode.OK
