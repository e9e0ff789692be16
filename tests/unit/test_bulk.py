"""embed-cluster embed's output folder (embed_client/bulk_store.py) and input files (embed_client/bulk_sources.py),
without a cluster."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from embed_client.bulk_sources import SourceError, find_sources, read_jsonl, split_text
from embed_client.bulk_store import Store, StoreError

SETTINGS = {"format": "npy", "dim": 3, "model": "m", "chunk_tokens": None, "overlap_tokens": None, "normalize": True}


def rows(n: int, start: int = 0) -> tuple[list[dict], np.ndarray]:
    metadata = [{"source": "s", "start": i, "end": i + 1, "text": f"t{i}"} for i in range(start, start + n)]
    return metadata, np.arange(start * 3, (start + n) * 3, dtype=np.float32).reshape(n, 3)


@pytest.mark.parametrize("fmt", ["npy", "jsonl"])
def test_a_resumed_store_keeps_committed_files_and_drops_a_torn_one(tmp_path: Path, fmt: str) -> None:
    settings = {**SETTINGS, "format": fmt}
    store = Store(tmp_path, settings)
    store.commit("a", {"size": 1}, *rows(2))
    store.commit("b", {"size": 2}, *rows(0, 2))
    store.commit("c", {"size": 3}, *rows(3, 2))
    store.close()
    # a crash while writing a fourth file: rows on disk, and half of its manifest line
    with open(store.vectors_path, "ab") as f:
        f.write(b"\x01" * 20)
    with open(store.metadata_path, "ab") as f:
        f.write(b'{"source": "torn')
    with open(store.manifest_path, "ab") as f:
        f.write(b'{"key": "d", "rows": 4')
    resumed = Store(tmp_path, settings)
    assert set(resumed.finished) == {"a", "b", "c"} and resumed.rows == 5
    resumed.commit("d", {"size": 4}, *rows(1, 5))
    resumed.close()
    expected = rows(6)
    if fmt == "npy":
        np.testing.assert_array_equal(np.load(tmp_path / "vectors.npy"), expected[1])
    else:
        lines = (tmp_path / "vectors.jsonl").read_text().splitlines()
        np.testing.assert_array_equal(np.array([json.loads(line) for line in lines], np.float32), expected[1])
    metadata = [json.loads(line) for line in (tmp_path / "metadata.jsonl").read_text().splitlines()]
    assert metadata == expected[0]
    manifest = [json.loads(line) for line in (tmp_path / "manifest.jsonl").read_text().splitlines()]
    assert manifest[0] == {"settings": settings}
    assert [m["key"] for m in manifest[1:]] == ["a", "b", "c", "d"]
    assert [m["rows"] for m in manifest[1:]] == [2, 0, 3, 1]


def test_the_npy_file_is_a_valid_array_after_every_file(tmp_path: Path) -> None:
    store = Store(tmp_path, SETTINGS)
    assert np.load(tmp_path / "vectors.npy").shape == (0, 3)
    store.commit("a", {}, *rows(4))
    assert np.load(tmp_path / "vectors.npy").shape == (4, 3)
    store.close()


def test_a_store_refuses_other_settings_and_a_foreign_folder(tmp_path: Path) -> None:
    Store(tmp_path, SETTINGS).close()
    with pytest.raises(StoreError, match="chunk_tokens"):
        Store(tmp_path, {**SETTINGS, "chunk_tokens": 100})
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "manifest.jsonl").write_text('{"not": "ours"}\n')
    with pytest.raises(StoreError, match="not a manifest"):
        Store(tmp_path / "other", SETTINGS)


def test_sources_are_found_sorted_without_hidden_files_or_the_output(tmp_path: Path) -> None:
    for name in ["b.txt", "a.md", "sub/c.pdf", "sub/d.jsonl", "x.csv", ".hidden.txt", ".git/e.txt", "out/f.txt"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    found = find_sources([str(tmp_path), str(tmp_path / "b.txt")], exclude=tmp_path / "out")
    assert [s.path.relative_to(tmp_path).as_posix() for s in found] == ["a.md", "b.txt", "sub/c.pdf", "sub/d.jsonl"]
    assert [s.kind for s in found] == ["text", "text", "pdf", "jsonl"]
    with pytest.raises(SourceError, match=r"x\.csv"):
        find_sources([str(tmp_path / "x.csv")], exclude=tmp_path / "out")
    with pytest.raises(SourceError, match="no such"):
        find_sources([str(tmp_path / "missing")], exclude=tmp_path / "out")


def test_jsonl_lines_need_a_text(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text('{"text": "one"}\n\n{"text": "two", "id": 2}\n')
    assert read_jsonl(path) == [(1, "one"), (3, "two")]
    path.write_text('{"text": "one"}\n{"title": "no text"}\n')
    with pytest.raises(SourceError, match=r"r\.jsonl:2"):
        read_jsonl(path)
    path.write_bytes(b'{"text": "\xff"}\n')
    with pytest.raises(SourceError, match="UTF-8"):
        read_jsonl(path)


def test_split_text_cuts_at_breaks_within_the_limit() -> None:
    text = "First paragraph here.\n\nSecond one, a bit longer.\nIts next line.\n\n" + "word " * 30 + "x" * 70
    pieces = split_text(text, 40)
    assert "".join(piece for _, piece in pieces) == text
    assert all(len(piece) <= 40 for _, piece in pieces)
    assert all(text[offset:offset + len(piece)] == piece for offset, piece in pieces)
    assert pieces[0][1] == "First paragraph here.\n\n"
    assert pieces[1][1] == "Second one, a bit longer.\n"
    assert split_text("short", 40) == [(0, "short")] and split_text("", 40) == []
