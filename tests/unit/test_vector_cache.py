"""The vector cache's store (embed_common/vector_cache.py) and the front's use of it (http_front/embed_cache.py),
in process: rows read back bit for bit, a bad row or a damaged file never yields a vector, the bound holds by
least recent use, partial hits keep the request's order and the workers' bytes."""

from __future__ import annotations

import itertools
import sqlite3
import threading
from pathlib import Path

import numpy as np
import orjson
import pytest

from embed_common import protocol, vector_cache
from embed_common.protocol import DEFAULT_OPTIONS, OPTION_ROWS, ChunkOption, Encoding, JobOptions
from embed_common.status import BrokerStatus
from embed_common.vector_cache import ROW_OVERHEAD, Entry, VectorStore
from http_front.broker_client import EmbedResult
from http_front.embed_cache import PRESENTATION, FrontCache, entry_key, recipe, serving_fingerprints
from http_front.errors import ApiError

DIM = 8


def vec(seed: int, dim: int = DIM) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(dim).astype(np.float32)


def one(vector: np.ndarray, tokens: int, truncated: bool) -> Entry:
    return Entry(protocol.encode_vectors(vector[None, :], Encoding.JSON), tokens, truncated)


def key(i: int) -> bytes:
    return entry_key("fp", b"{}", f"text {i}")


@pytest.fixture
def store(tmp_path: Path):
    s = VectorStore(tmp_path / "v.sqlite", 1 << 20)
    yield s
    s.close()


def test_rows_read_back_bit_for_bit_and_the_first_computation_stays(store: VectorStore) -> None:
    first, second = vec(1), vec(2)
    store.put([(key(1), one(first, 7, True))])
    store.put([(key(1), one(second, 9, False))])  # the same key again: not written over
    assert store.flush()
    found = store.get([key(1), key(2)])
    assert list(found) == [key(1)]
    assert found[key(1)].vectors == protocol.encode_vectors(first[None, :], Encoding.JSON)
    assert (found[key(1)].tokens, found[key(1)].truncated) == (7, True)
    stats = store.stats()
    assert (stats["entries"], stats["hits"], stats["misses"]) == (1, 1, 1)


def test_a_row_that_fails_its_check_is_a_miss_and_is_deleted(store: VectorStore, tmp_path: Path) -> None:
    store.put([(key(1), one(vec(1), 3, False)), (key(2), one(vec(2), 3, False))])
    assert store.flush()
    with sqlite3.connect(tmp_path / "v.sqlite") as conn:  # one number of row 1 changed, its check left as it was
        data = bytearray(conn.execute("SELECT vectors FROM rows WHERE key=?", (key(1),)).fetchone()[0])
        data[0] ^= 1
        conn.execute("UPDATE rows SET vectors=? WHERE key=?", (bytes(data), key(1)))
    assert list(store.get([key(1), key(2)])) == [key(2)]
    assert store.stats()["bad_rows"] == 1
    assert store.flush()
    assert store.stats()["entries"] == 1  # deleted


def test_a_row_that_is_not_json_rows_is_a_miss(store: VectorStore) -> None:
    store.put([(key(1), Entry(b"[1, 2]", 3)), (key(2), Entry(b"[]", 3))])  # one row: never an empty array
    assert store.flush()
    assert store.get([key(1), key(2)]) == {}
    assert store.stats()["bad_rows"] == 2


def test_eviction_keeps_the_bound_and_drops_the_least_recently_used(tmp_path: Path, monkeypatch) -> None:
    clock = itertools.count(1_000_000, 1_000_000)  # each write or touch a second after the last
    monkeypatch.setattr(vector_cache, "_now_ms", lambda: next(clock))
    monkeypatch.setattr(vector_cache, "TOUCH_AFTER_MS", 0)
    row_bytes = len(key(0)) + max(len(one(vec(i), 1, False).vectors) for i in range(25)) + ROW_OVERHEAD
    store = VectorStore(tmp_path / "v.sqlite", 20 * row_bytes)
    try:
        for i in range(20):
            store.put([(key(i), one(vec(i), 1, False))])
            assert store.flush()
        store.get([key(0)])  # key 0 used again: now the most recent
        assert store.flush()
        for i in range(20, 25):
            store.put([(key(i), one(vec(i), 1, False))])
            assert store.flush()
        stats = store.stats()
        assert stats["bytes"] <= 20 * row_bytes and stats["evictions"] > 0
        kept = store.get([key(i) for i in range(25)])
        assert key(0) in kept and all(key(i) in kept for i in range(20, 25))
        assert key(1) not in kept  # the oldest unused went first
        assert stats["entries"] == len(kept)
    finally:
        store.close()


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_damaged_file_is_moved_aside_and_started_again(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "v.sqlite"
    store = VectorStore(path, 1 << 20)
    store.put([(key(i), one(vec(i), 1, False)) for i in range(200)])
    assert store.flush()
    store.close()
    data = path.read_bytes()
    path.write_bytes(b"not a database at all " * 300 if damage == "garbage" else data[: len(data) // 3])
    store = VectorStore(path, 1 << 20)
    try:
        found = store.get([key(i) for i in range(200)])
        index = {key(i): i for i in range(200)}
        for k, entry in found.items():  # whatever a truncated file still holds is what was written
            assert entry.vectors == one(vec(index[k]), 1, False).vectors
        store.put([(key(500), one(vec(500), 1, False))])
        assert store.flush()
        assert store.get([key(500)])[key(500)].vectors == one(vec(500), 1, False).vectors
    finally:
        store.close()
    if damage == "garbage":
        assert (tmp_path / "v.sqlite.damaged").exists()


def test_a_file_damaged_while_open_is_started_again_and_serving_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "v.sqlite"
    store = VectorStore(path, 1 << 20)
    try:
        store.put([(key(i), one(vec(i), 1, False)) for i in range(300)])
        assert store.flush()
        with sqlite3.connect(path) as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        with path.open("r+b") as f:  # every page after the first overwritten
            f.seek(4096)
            f.write(b"\xa5" * (path.stat().st_size - 4096))
        index = {key(i): i for i in range(300)}
        for _ in range(3):  # reads fail as misses (never a wrong vector) until the writer starts a new file
            found = store.get(list(index))
            assert all(entry.vectors == one(vec(index[k]), 1, False).vectors for k, entry in found.items())
            store.flush()
        store.put([(key(900), one(vec(900), 1, False))])
        assert store.flush()
        assert key(900) in store.get([key(900)])
        assert store.stats()["rebuilds"] >= 1
    finally:
        store.close()


def test_two_stores_share_one_file(tmp_path: Path) -> None:
    a, b = VectorStore(tmp_path / "v.sqlite", 1 << 20), VectorStore(tmp_path / "v.sqlite", 1 << 20)
    try:
        a.put([(key(1), one(vec(1), 1, False))])
        b.put([(key(2), one(vec(2), 1, False))])
        assert a.flush() and b.flush()
        assert set(a.get([key(1), key(2)])) == set(b.get([key(1), key(2)])) == {key(1), key(2)}
        b.clear()
        assert a.get([key(1), key(2)]) == {}
    finally:
        a.close()
        b.close()


def test_the_key_holds_every_option_that_changes_the_vector() -> None:
    plain = recipe(True, DEFAULT_OPTIONS)
    assert recipe(True, JobOptions(encoding=Encoding.JSON)) == plain  # how rows are written: not in the key
    assert recipe(False, DEFAULT_OPTIONS) != plain
    assert recipe(True, JobOptions(truncate=False)) != plain
    assert recipe(True, JobOptions(chunk=ChunkOption(tokens=64))) != recipe(True, JobOptions(chunk=ChunkOption(
        tokens=64, overlap=3)))
    for name, option in OPTION_ROWS.items():  # every option but the presentation's changes the key
        if name not in PRESENTATION:
            assert recipe(True, JobOptions(**{name: option.metadata["example"]})) != plain, name
    assert entry_key("a", plain, "x") != entry_key("b", plain, "x") != entry_key("a", plain, "y")


def test_fingerprints_only_when_every_serving_worker_has_one() -> None:
    assert serving_fingerprints(BrokerStatus(workers=[{"fingerprint": "b"}, {"fingerprint": "a"}])) == ["a", "b"]
    assert serving_fingerprints(BrokerStatus(workers=[{"fingerprint": "a"}, {}])) == []
    assert serving_fingerprints(BrokerStatus()) == []
    two = BrokerStatus(models=[{"alias": "a"}, {"alias": "b"}],
                       workers=[{"model": "a", "fingerprint": "fa"}, {"model": "b", "fingerprint": "fb"}])
    assert serving_fingerprints(two, "b") == ["fb"]
    assert serving_fingerprints(two) == ["fa"]  # the default model: the first


def computed(texts: list[str], fingerprint: str = "fp") -> EmbedResult:
    """What the broker client gives for ``texts`` in JSON: a deterministic row a text, in jobs of three."""
    result = EmbedResult()
    for start in range(0, len(texts), 3):
        rows = np.stack([vec(int(t.split()[1])) for t in texts[start:start + 3]])
        result.parts.append(protocol.encode_vectors(rows, Encoding.JSON))
        result.dims.append(DIM)
    result.row_tokens = [int(t.split()[1]) % 5 + 2 for t in texts]
    result.row_fingerprints = [fingerprint] * len(texts)
    result.tokens = sum(result.row_tokens)
    result.truncated = [i for i, t in enumerate(texts) if int(t.split()[1]) % 4 == 0]
    return result


def test_partial_hits_send_only_the_misses_and_answer_the_workers_bytes_in_order(store: VectorStore) -> None:
    cache = FrontCache(store)
    status = BrokerStatus(dim=DIM, workers=[{"fingerprint": "fp"}])
    asked: list[list[str]] = []

    def compute(texts: list[str]) -> EmbedResult:
        asked.append(texts)
        return computed(texts)

    first = [f"text {i}" for i in range(0, 20, 2)]
    cache.embed(first, True, DEFAULT_OPTIONS, status, None, compute)
    assert store.flush()
    request = [f"text {i}" for i in reversed(range(20))]
    result = cache.embed(request, True, DEFAULT_OPTIONS, status, None, compute)
    assert asked[-1] == [t for t in request if int(t.split()[1]) % 2]  # only the misses, in their order
    expected = computed(request)
    assert b"".join(map(bytes, result.vectors_json())) == b"".join(map(bytes, expected.vectors_json()))
    assert orjson.dumps(result.rows_json()) == orjson.dumps(expected.rows_json())
    assert (result.tokens, result.truncated) == (expected.tokens, expected.truncated)
    assert store.flush()
    again = cache.embed(request, True, DEFAULT_OPTIONS, status, None, compute)  # all hits, as float32
    assert len(asked) == 2
    assert again.vectors.tobytes() == expected.vectors.tobytes()


def test_an_other_model_or_option_never_hits(store: VectorStore) -> None:
    cache = FrontCache(store)
    texts = [f"text {i}" for i in range(6)]
    calls: list[int] = []

    def compute(batch: list[str]) -> EmbedResult:
        calls.append(len(batch))
        return computed(batch, fingerprint=fp)

    fp = "model-a"
    cache.embed(texts, True, DEFAULT_OPTIONS, BrokerStatus(dim=DIM, workers=[{"fingerprint": fp}]), None, compute)
    assert store.flush()
    fp = "model-b"
    cache.embed(texts, True, DEFAULT_OPTIONS, BrokerStatus(dim=DIM, workers=[{"fingerprint": fp}]), None, compute)
    model_a = BrokerStatus(dim=DIM, workers=[{"fingerprint": "model-a"}])
    cache.embed(texts, False, DEFAULT_OPTIONS, model_a, None, compute)  # model a's, not normalized
    assert calls == [6, 6, 6]


def test_a_too_long_miss_is_named_by_its_index_in_the_request(store: VectorStore) -> None:
    cache = FrontCache(store)
    status = BrokerStatus(dim=DIM, workers=[{"fingerprint": "fp"}])
    cache.embed(["text 0", "text 1"], True, JobOptions(truncate=False), status, None, computed)
    assert store.flush()

    def too_long(batch: list[str]) -> EmbedResult:
        raise ApiError("INPUT_TOO_LONG", "too long", indices=[1], max_tokens=256)

    with pytest.raises(ApiError) as raised:
        cache.embed(["text 0", "text 7", "text 1", "text 9"], True, JobOptions(truncate=False), status, None, too_long)
    assert raised.value.code == "INPUT_TOO_LONG"
    assert raised.value.details["indices"] == [3]  # the second miss ("text 9") is the request's fourth text


def test_texts_are_not_in_the_file(store: VectorStore, tmp_path: Path) -> None:
    cache = FrontCache(store)
    status = BrokerStatus(dim=DIM, workers=[{"fingerprint": "fp"}])
    cache.embed(["text 42 a secret sentence"], True, DEFAULT_OPTIONS, status, None, computed)
    store.close()
    for file in tmp_path.iterdir():
        assert b"secret sentence" not in file.read_bytes()


def test_json_rows_read_back_to_the_very_float32() -> None:
    rows = np.random.default_rng(0).standard_normal((64, 384)).astype(np.float32)
    text = protocol.encode_vectors(rows, Encoding.JSON)
    back = protocol.decode_vectors(text, 64, 384, Encoding.JSON)
    assert back.tobytes() == rows.tobytes()
    assert protocol.encode_vectors(back, Encoding.JSON) == text == orjson.dumps(
        rows, option=orjson.OPT_SERIALIZE_NUMPY)


def computed_chunks(texts: list[str]) -> EmbedResult:
    """A chunked answer: text "text N" has N % 3 chunks (none, one or two), each its own deterministic row."""
    result = EmbedResult()
    rows = []
    for index, text in enumerate(texts):
        n = int(text.split()[1])
        for c in range(n % 3):
            rows.append(vec(n * 10 + c))
            result.chunks.append([index, c * 5, c * 5 + 4])
            result.row_tokens.append(c + 3)
    matrix = np.stack(rows) if rows else np.zeros((0, DIM), np.float32)
    result.parts.append(protocol.encode_vectors(matrix, Encoding.JSON))
    result.dims.append(DIM)
    result.row_fingerprints = ["fp"] * len(rows)
    result.tokens = sum(result.row_tokens)
    return result


def test_chunked_partial_hits_keep_each_texts_chunks_in_order(store: VectorStore) -> None:
    cache = FrontCache(store)
    status = BrokerStatus(dim=DIM, workers=[{"fingerprint": "fp"}])
    options = JobOptions(chunk=ChunkOption(tokens=40))
    asked: list[list[str]] = []

    def compute(texts: list[str]) -> EmbedResult:
        asked.append(texts)
        return computed_chunks(texts)

    cache.embed([f"text {i}" for i in range(0, 12, 2)], True, options, status, None, compute)
    assert store.flush()
    request = [f"text {i}" for i in reversed(range(12))]
    result = cache.embed(request, True, options, status, None, compute)
    # texts with no chunks are not kept (no rows to tell their worker's model), so they are asked again
    assert asked[-1] == [t for t in request if int(t.split()[1]) % 2 or int(t.split()[1]) % 3 == 0]
    expected = computed_chunks(request)
    assert b"".join(map(bytes, result.vectors_json())) == b"".join(map(bytes, expected.vectors_json()))
    assert (result.chunks, result.tokens) == (expected.chunks, expected.tokens)
    cache.embed(request[:2], True, DEFAULT_OPTIONS, status, None, lambda texts: asked.append(texts) or computed(
        texts))
    assert asked[-1] == request[:2]  # unchunked: another recipe, not the chunked entries


def test_the_client_reads_the_servers_hits_header() -> None:
    from embed_client import client
    from http_front import embed_cache

    assert client.HITS_HEADER == embed_cache.HITS_HEADER
    reader = client.EmbedClient()
    reader._count_hits("3/4")
    reader._count_hits("bogus")
    reader._count_hits("1/2")
    assert reader.cache_hits == (4, 6)


def open_at_once(path: Path, openers: int) -> list[BaseException]:
    """What ``openers`` threads met opening a store on ``path`` together (each store closed after)."""
    start = threading.Barrier(openers)
    stores: list[VectorStore] = []
    errors: list[BaseException] = []

    def open_one() -> None:
        start.wait()
        try:
            stores.append(VectorStore(path, 1 << 20))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(openers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in stores:
        s.close()
    return errors


def test_several_stores_opening_one_new_file_at_once_all_open(tmp_path: Path) -> None:
    """Fronts started together on one new file: SQLite refuses the switch to WAL at once ("database is
    locked", no busy wait) while another connection holds the file; each store waits its turn instead (without
    that, about one round in ten here had a store that could not open, and a front serving without its cache)."""
    for round_ in range(40):
        errors = open_at_once(tmp_path / f"new-{round_}.sqlite", 4)
        assert not errors, f"round {round_}: {errors!r}"
