"""The vector cache's store: content-addressed vectors in one SQLite file (WAL mode), bounded, LRU.

A row is ``key -> (vectors, spans, tokens, flags, check)``: one text's vectors (one, or one per chunk, with the
chunks' ``[start, end)`` spans), kept as the JSON text the worker wrote them in (each number the shortest text
that reads back to its float32: the same float32, and an answer made of it needs no number written again). The
key is a digest of everything that decides them (http_front/embed_cache.py ``entry_key``), never the text
itself, so no document is copied into the file. ``check`` is a CRC-32 of the key and the rest of the row: a
row that does not match it (a damaged page) is a miss and is deleted, never served. A file SQLite cannot read
(truncated, overwritten, not a database) is moved aside (``<name>.damaged``), logged, and a new one is
started; serving goes on.

Readers share a small pool of connections (WAL: they never wait for the writer); every write goes through one
writer thread that commits in batches, so that a miss costs its request a queue append. The file may be shared
with other processes (another front): SQLite's locks keep it consistent, and each process's writer waits for
the others' at most ``BUSY_MS``. The size is the rows' bytes plus a fixed overhead each (``ROW_OVERHEAD``),
kept in the file itself; past ``max_bytes`` the least recently used rows go until it is under ``EVICT_TO``
of it. ``python -m bench.cache`` measures the store's costs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import sqlite3
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

SCHEMA = 1
ROW_OVERHEAD = 160  # bytes a row costs beyond its key and vectors: its cells, the key's and the LRU's indexes
PAGE_SIZE = 16384
EVICT_TO = 0.9  # an eviction frees rows until the size is this fraction of the bound
TOUCH_AFTER_MS = 1000  # a hit moves its row up the LRU order only when its last use is older than this
BUSY_MS = 2000  # how long a write waits for another process's
READERS = 4  # connections reads share (each holds a page cache of READER_CACHE_KIB)
READER_CACHE_KIB = 2048
WRITE_BATCH = 2048  # queued writes one commit takes at most
COMMIT_WAIT = 0.05  # seconds a commit waits for more writes to take along
WRITE_QUEUE = 100_000  # rows waiting to be written at most; more are dropped (counted), never waited for
FLAGS_TRUNCATED = 1


@dataclass(frozen=True)
class Entry:
    """One text's cached result."""

    vectors: bytes  # the rows as a JSON array of arrays, as a worker wrote them: one row, or one per chunk
    tokens: int  # the text's tokens when it was computed (all its chunks')
    truncated: bool = False  # it was cut at the model's limit
    spans: np.ndarray | None = None  # (rows, 2) int32: each chunk's [start, end) in the text; None: not chunked


Row = tuple[bytes, Entry]  # what is written


@dataclass
class Counters:
    hits: int = 0
    misses: int = 0
    writes: int = 0
    dropped: int = 0  # rows not written: the queue was full, or the write failed
    bad_rows: int = 0  # rows whose check failed (deleted, never served)
    rebuilds: int = 0  # times the file was found damaged, moved aside and started again


def row_check(key: bytes, vectors: bytes, spans: bytes | None, tokens: int, flags: int) -> int:
    check = zlib.crc32(struct.pack("<qqq", tokens, flags, -1 if spans is None else len(spans)), zlib.crc32(key))
    return zlib.crc32(spans or b"", zlib.crc32(vectors, check))


def json_outline(text: bytes) -> bool:
    """Whether ``text`` is outlined as a JSON array of arrays (its numbers are not read: the row's check vouches
    for them, as the worker wrote them)."""
    return text == b"[]" or (text.startswith(b"[[") and text.endswith(b"]]"))


def _now_ms() -> int:
    return time.time_ns() // 1_000_000  # wall clock: shared with other processes using the file


class Damaged(Exception):
    """SQLite could not read the file as a database (corrupt, truncated or overwritten)."""


def _is_damage(exc: sqlite3.Error) -> bool:
    """Corruption, as opposed to a busy lock or a full disk (which pass)."""
    return (isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.OperationalError)) \
        or "malformed" in str(exc) or "not a database" in str(exc)


class VectorStore:
    """One cache file, shared by every thread of this process and by other processes that open it."""

    def __init__(self, path: str | os.PathLike[str], max_bytes: int) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.counters = Counters()
        self._lock = threading.Lock()
        self._generation = 0  # +1 each time the file is started again: older connections are closed
        self._readers: list[tuple[int, sqlite3.Connection]] = []
        self._pending: queue.SimpleQueue[tuple[str, Any] | None] = queue.SimpleQueue()
        self._queued = 0
        self._closed = False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer_conn = self._open_checked()
        self._writer = threading.Thread(target=self._write_loop, name="vector-cache-writer", daemon=True)
        self._writer.start()

    # -- opening -------------------------------------------------------------------------------------------
    def _connect(self, cache_kib: int) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=BUSY_MS / 1000, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA cache_size=-{cache_kib}")
        conn.execute(f"PRAGMA busy_timeout={BUSY_MS}")
        return conn

    def _open_checked(self) -> sqlite3.Connection:
        """The writer's connection to a file that holds this schema; a damaged file is moved aside first."""
        for attempt in range(2):
            conn = None
            try:
                conn = self._connect(READER_CACHE_KIB)
                conn.execute(f"PRAGMA page_size={PAGE_SIZE}")  # a new file's: a row of a few KB fits in a page
                self._enter_wal(conn)
                conn.execute("PRAGMA synchronous=NORMAL")  # in WAL: a crash of the process loses nothing committed
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL)")
                # a rowid table: its leaves hold rows whole up to nearly a page (a table keyed by the blob would
                # spill a row of more than about a quarter page into overflow pages)
                conn.execute("CREATE TABLE IF NOT EXISTS rows (id INTEGER PRIMARY KEY, key BLOB NOT NULL UNIQUE, "
                             "vectors BLOB NOT NULL, spans BLOB, tokens INTEGER NOT NULL, "
                             "flags INTEGER NOT NULL, check_ INTEGER NOT NULL, used INTEGER NOT NULL)")
                conn.execute("CREATE INDEX IF NOT EXISTS rows_by_use ON rows (used)")
                for name in ("schema", "bytes", "entries", "evictions"):
                    conn.execute("INSERT OR IGNORE INTO meta VALUES (?, ?)", (name, SCHEMA if name == "schema" else 0))
                schema = conn.execute("SELECT value FROM meta WHERE name='schema'").fetchone()[0]
                conn.execute("COMMIT")
                if schema != SCHEMA:
                    raise Damaged(f"schema {schema}, this version reads {SCHEMA}")
                return conn
            except (sqlite3.DatabaseError, Damaged) as exc:
                if conn is not None:
                    with contextlib.suppress(sqlite3.Error):
                        conn.close()
                if (isinstance(exc, sqlite3.Error) and not _is_damage(exc)) or attempt:
                    raise
                self._move_aside(exc)
        raise AssertionError("unreachable")

    @staticmethod
    def _enter_wal(conn: sqlite3.Connection) -> None:
        """Put the file in WAL mode, waiting (up to the busy timeout) for others opening it at the same moment:
        SQLite answers the mode change with "database is locked" at once, without its busy handler, while
        another connection holds the file (three fronts started together on one new file met it;
        tests/unit/test_vector_cache.py opens one new file from several threads at once)."""
        deadline = time.monotonic() + BUSY_MS / 1000
        while True:
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if ("locked" not in str(exc) and "busy" not in str(exc)) or time.monotonic() > deadline:
                    raise
            time.sleep(0.01)

    def _move_aside(self, why: object) -> None:
        aside = self.path.with_name(self.path.name + ".damaged")
        log.error("vector cache %s is damaged (%s): moved to %s, starting a new one", self.path, why, aside)
        self.counters.rebuilds += 1
        for suffix in ("", "-wal", "-shm"):  # the last damaged copy is kept for a look, older ones go
            source = Path(str(self.path) + suffix)
            target = Path(str(aside) + suffix)
            with contextlib.suppress(FileNotFoundError):
                os.replace(source, target)

    def _rebuild(self, why: object) -> None:
        """The file turned out damaged while in use: start a new one (readers reconnect on their next read)."""
        with self._lock:
            self._generation += 1
            readers, self._readers = self._readers, []
        for _, conn in readers:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
        with contextlib.suppress(sqlite3.Error):
            self._writer_conn.close()
        self._move_aside(why)
        self._writer_conn = self._open_checked()

    @contextlib.contextmanager
    def _reader(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            generation = self._generation
            conn = next((c for g, c in self._readers if g == generation), None)
            if conn is not None:
                self._readers.remove((generation, conn))
        if conn is None:
            conn = self._connect(READER_CACHE_KIB)
        try:
            yield conn
        finally:
            with self._lock:
                keep = generation == self._generation and len(self._readers) < READERS and not self._closed
                if keep:
                    self._readers.append((generation, conn))
            if not keep:
                conn.close()

    # -- reads (any thread) ---------------------------------------------------------------------------------
    def get(self, keys: list[bytes]) -> dict[bytes, Entry]:
        """The entries of ``keys`` found with a good check; never raises (a read that
        fails is all misses; a damaged file is started again by the writer)."""
        found: dict[bytes, Entry] = {}
        if not keys:
            return found
        try:
            with self._reader() as conn:
                rows = []
                for start in range(0, len(keys), 500):  # SQLite's limit on host parameters is far above 500
                    part = keys[start:start + 500]
                    rows += conn.execute("SELECT key, vectors, spans, tokens, flags, check_, used FROM rows "
                                         f"WHERE key IN ({','.join('?' * len(part))})", part).fetchall()
        except sqlite3.Error as exc:
            if _is_damage(exc):
                self._pending.put(("damaged", str(exc)))
            else:
                log.warning("vector cache read failed (served as misses): %s", exc)
            rows = []
        stale = _now_ms() - TOUCH_AFTER_MS
        bad: list[bytes] = []
        touched: list[bytes] = []
        for key, vectors, spans, tokens, flags, check, used in rows:
            count = 1 if spans is None else len(spans) // 8
            if row_check(key, vectors, spans, tokens, flags) != check or not json_outline(vectors) \
                    or (vectors == b"[]") != (count == 0):
                bad.append(key)
                continue
            found[key] = Entry(vectors, tokens,
                               bool(flags & FLAGS_TRUNCATED),
                               None if spans is None else np.frombuffer(spans, dtype="<i4").reshape(count, 2))
            if used < stale:
                touched.append(key)
        with self._lock:
            self.counters.hits += len(found)
            self.counters.misses += len(keys) - len(found)
            self.counters.bad_rows += len(bad)
        if bad:
            log.warning("vector cache: %d row(s) failed their check: deleted, computed again", len(bad))
            self._pending.put(("delete", bad))
        if touched:
            self._pending.put(("touch", touched))
        return found

    # -- writes (queued; the writer thread does them) -------------------------------------------------------
    def put(self, rows: list[Row]) -> None:
        """Queue ``(key, entry)`` rows to be written; a row whose key is there already is left as it is (the first
        computation stays). Never waits: past WRITE_QUEUE rows, rows are dropped."""
        self.put_later(lambda: rows, len(rows))

    def put_later(self, rows: Callable[[], list[Row]], count: int) -> None:
        """As :meth:`put`, the ``count`` rows made by ``rows()`` on the writer thread (their decoding is off
        the caller's path)."""
        with self._lock:
            if self._closed or self._queued + count > WRITE_QUEUE:
                self.counters.dropped += count
                return
            self._queued += count
        self._pending.put(("put", (rows, count)))

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every row queued so far is written (tests, ``cache stats``); True if it was."""
        done = threading.Event()
        self._pending.put(("flush", done))
        return done.wait(timeout)

    def clear(self) -> None:
        """Delete every row (queued rows first, so that none lands after)."""
        done = threading.Event()
        self._pending.put(("clear", done))
        done.wait(30)

    def stats(self) -> dict[str, int]:
        """The file's entries, bytes (rows' accounted size), evictions; this process's hits, misses, writes,
        dropped, bad rows and rebuilds; and the file's size on disk."""
        meta: dict[str, int] = {}
        try:
            with self._reader() as conn:
                meta = dict(conn.execute("SELECT name, value FROM meta").fetchall())
        except sqlite3.Error as exc:
            log.warning("vector cache stats unreadable: %s", exc)
        with self._lock:
            counters = self.counters
            mine = {"hits": counters.hits, "misses": counters.misses, "writes": counters.writes,
                    "dropped": counters.dropped, "bad_rows": counters.bad_rows, "rebuilds": counters.rebuilds}
        size = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(OSError):
                size += os.stat(str(self.path) + suffix).st_size
        return {"entries": int(meta.get("entries", 0)), "bytes": int(meta.get("bytes", 0)),
                "max_bytes": self.max_bytes, "evictions": int(meta.get("evictions", 0)), **mine,
                "file_bytes": size}

    def close(self) -> None:
        """Write what is queued, stop the writer, close every connection."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._pending.put(None)
        self._writer.join(timeout=30)
        with self._lock:
            readers, self._readers = self._readers, []
        for _, conn in readers:
            conn.close()
        with contextlib.suppress(sqlite3.Error):
            self._writer_conn.close()

    # -- the writer thread ----------------------------------------------------------------------------------
    def _write_loop(self) -> None:
        while True:
            item = self._pending.get()
            batch = [item]
            # what else comes within COMMIT_WAIT goes into the same commit (each commit writes its pages to the
            # WAL again: one a request would cost the machine more than the request's lookup); a flush, a
            # clear or the close is not kept waiting
            until = time.monotonic() + COMMIT_WAIT
            while item is not None and item[0] not in ("flush", "clear") and len(batch) < WRITE_BATCH:
                try:
                    item = self._pending.get(timeout=max(0.0, until - time.monotonic()))
                except queue.Empty:
                    break
                batch.append(item)
            stop = any(i is None for i in batch)
            try:
                self._write(batch)
            except Exception:  # a failed write loses those rows (counted), never the writer
                log.exception("vector cache write failed")
            if stop:
                return

    def _write(self, batch: list[tuple[str, Any] | None]) -> None:
        puts: list[Row] = []
        deletes: list[bytes] = []
        touches: list[bytes] = []
        events: list[threading.Event] = []
        clear = False
        damaged: str | None = None
        queued = dropped = 0
        for item in batch:
            if item is None:
                continue
            kind, value = item
            if kind == "put":
                make, count = value
                queued += count
                try:
                    puts.extend(make())
                except Exception:  # rows that cannot be made are not written (counted), the others are
                    log.exception("vector cache: rows not made")
                    dropped += count
            elif kind == "delete":
                deletes.extend(value)
            elif kind == "touch":
                touches.extend(value)
            elif kind == "damaged":
                damaged = str(value)
            elif kind == "clear":
                clear = True
                events.append(value)
            elif kind == "flush":
                events.append(value)
        with self._lock:
            self._queued -= queued
            self.counters.dropped += dropped
        try:
            if damaged is not None:
                self._check_damage(damaged)
            self._commit(puts, deletes, touches, clear)
        except sqlite3.Error as exc:
            with self._lock:
                self.counters.dropped += len(puts)
            if _is_damage(exc):
                self._rebuild(exc)
            else:
                log.warning("vector cache: %d row(s) not written: %s", len(puts), exc)
        finally:
            for event in events:
                event.set()

    def _check_damage(self, reported: str) -> None:
        """A reader met a damaged file: start again, unless another thread's report already did."""
        try:
            self._writer_conn.execute("SELECT count(*) FROM meta").fetchone()
            ok = self._writer_conn.execute("PRAGMA quick_check(1)").fetchone()[0] == "ok"
        except sqlite3.Error:
            ok = False
        if not ok:
            self._rebuild(reported)

    def _commit(self, puts: list[Row], deletes: list[bytes],
                touches: list[bytes], clear: bool) -> None:
        conn = self._writer_conn
        now = _now_ms()
        conn.execute("BEGIN IMMEDIATE")
        try:
            added = 0
            added_bytes = 0
            for key, entry in puts:
                data = entry.vectors
                spans = None if entry.spans is None else np.ascontiguousarray(entry.spans, dtype="<i4").tobytes()
                flags = FLAGS_TRUNCATED if entry.truncated else 0
                check = row_check(key, data, spans, entry.tokens, flags)
                cursor = conn.execute("INSERT OR IGNORE INTO rows (key, vectors, spans, tokens, flags, check_, "
                                      "used) VALUES (?, ?, ?, ?, ?, ?, ?)",
                                      (key, data, spans, entry.tokens, flags, check, now))
                if cursor.rowcount > 0:
                    added += 1
                    added_bytes += len(key) + len(data) + len(spans or b"") + ROW_OVERHEAD
            removed, removed_bytes = self._delete(conn, deletes)
            if touches:
                conn.executemany("UPDATE rows SET used=? WHERE key=?", [(now, k) for k in touches])
            if clear:
                conn.execute("DELETE FROM rows")
                conn.execute("UPDATE meta SET value=0 WHERE name IN ('bytes', 'entries')")
            else:
                self._add_meta(conn, added - removed, added_bytes - removed_bytes)
                self._evict(conn)
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        with self._lock:
            self.counters.writes += added

    @staticmethod
    def _add_meta(conn: sqlite3.Connection, entries: int, size: int) -> None:
        if entries or size:
            conn.execute("UPDATE meta SET value=value+? WHERE name='entries'", (entries,))
            conn.execute("UPDATE meta SET value=value+? WHERE name='bytes'", (size,))

    @staticmethod
    def _delete(conn: sqlite3.Connection, keys: list[bytes]) -> tuple[int, int]:
        removed = removed_bytes = 0
        for key in keys:
            row = conn.execute("DELETE FROM rows WHERE key=? RETURNING length(key) + length(vectors) + "
                               "ifnull(length(spans), 0)", (key,)).fetchone()
            if row is not None:
                removed += 1
                removed_bytes += int(row[0]) + ROW_OVERHEAD
        return removed, removed_bytes

    def _evict(self, conn: sqlite3.Connection) -> None:
        """Past the bound: the least recently used rows go, until the size is EVICT_TO of the bound."""
        size, entries = (dict(conn.execute("SELECT name, value FROM meta WHERE name IN ('bytes', 'entries')")
                              .fetchall()).get(n, 0) for n in ("bytes", "entries"))
        if size <= self.max_bytes or entries <= 0:
            return
        excess = size - int(self.max_bytes * EVICT_TO)
        count = max(1, min(entries, int(excess / (size / entries)) + 1))
        rows = conn.execute("DELETE FROM rows WHERE id IN (SELECT id FROM rows ORDER BY used LIMIT ?) "
                            "RETURNING length(key) + length(vectors) + ifnull(length(spans), 0)", (count,)).fetchall()
        freed = sum(int(r[0]) + ROW_OVERHEAD for r in rows)
        self._add_meta(conn, -len(rows), -freed)
        conn.execute("UPDATE meta SET value=value+? WHERE name='evictions'", (len(rows),))
