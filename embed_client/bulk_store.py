"""The output folder of ``embed-cluster embed``, written so that an interrupted run can resume.

    OUT/vectors.npy (or vectors.jsonl)  a row per chunk: float32 (rows, dim), or a JSON list per line
    OUT/metadata.jsonl                  the same rows: {"source", "page", "line", "start", "end", "text"}
    OUT/manifest.jsonl                  the run's settings, then a line per finished file

A file's rows are appended to both row files, flushed to disk, and only then is the file's line appended to
the manifest, with the sizes of the row files after it. The manifest is the truth: a run that resumes cuts
the row files back to the sizes its last line names, dropping the rows of a file that was not finished, and
goes on with the files it does not name. So vectors.npy stays a valid array at every moment: its header is
rewritten in place (it has room for any row count) after each file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

NPY_HEADER_BYTES = 128  # magic, version, length, then the header dict padded with spaces


class StoreError(Exception):
    """The output folder cannot be used for this run (other settings, or damaged)."""


@dataclass
class Commit:
    """The sizes of the row files after a finished file: where a resumed run cuts them back to."""

    rows: int
    vectors_bytes: int
    metadata_bytes: int


def npy_header(rows: int, dim: int) -> bytes:
    text = f"{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {dim}), }}"
    room = NPY_HEADER_BYTES - 10
    return b"\x93NUMPY\x01\x00" + room.to_bytes(2, "little") + (text.ljust(room - 1) + "\n").encode("latin-1")


class Store:
    def __init__(self, out: Path, settings: dict[str, Any]) -> None:
        """Open ``out`` for a run with ``settings`` (format, dim, model, chunking): new, or resumed."""
        self.out = out
        self.settings = settings
        self.format = settings["format"]
        self.dim = int(settings["dim"])
        out.mkdir(parents=True, exist_ok=True)
        self.manifest_path = out / "manifest.jsonl"
        self.vectors_path = out / ("vectors.npy" if self.format == "npy" else "vectors.jsonl")
        self.metadata_path = out / "metadata.jsonl"
        self.finished: dict[str, dict[str, Any]] = {}  # key -> its latest manifest line
        start = Commit(0, NPY_HEADER_BYTES if self.format == "npy" else 0, 0)
        self.commit_state = self._resume(start) if self.manifest_path.exists() else self._create(start)
        self._vectors: BinaryIO = open(self.vectors_path, "r+b")  # noqa: SIM115 - closed in close()
        self._metadata: BinaryIO = open(self.metadata_path, "r+b")  # noqa: SIM115
        self._manifest: BinaryIO = open(self.manifest_path, "ab")  # noqa: SIM115
        self._cut_back()

    @property
    def rows(self) -> int:
        return self.commit_state.rows

    def _create(self, start: Commit) -> Commit:
        for path in (self.vectors_path, self.metadata_path):
            path.write_bytes(b"")
        if self.format == "npy":
            self.vectors_path.write_bytes(npy_header(0, self.dim))
        self.manifest_path.write_bytes(json.dumps({"settings": self.settings}).encode() + b"\n")
        return start

    def _resume(self, start: Commit) -> Commit:
        data = self.manifest_path.read_bytes()
        complete = data[: data.rfind(b"\n") + 1]  # a line cut short by a crash is not a commit
        lines = [json.loads(line) for line in complete.splitlines() if line.strip()]
        if not lines or "settings" not in lines[0]:
            raise StoreError(f"{self.manifest_path} is not a manifest of embed-cluster embed")
        theirs = lines[0]["settings"]
        if theirs != self.settings:
            differ = sorted(k for k in {*theirs, *self.settings} if theirs.get(k) != self.settings.get(k))
            raise StoreError(f"{self.out} holds a run with other settings ({', '.join(differ)}); resume it with "
                             "the same options, or write to another folder")
        if not self.vectors_path.exists() or not self.metadata_path.exists():
            raise StoreError(f"{self.out} has a manifest but lacks its row files; write to another folder")
        commit = start
        for line in lines[1:]:
            self.finished[line["key"]] = line
            commit = Commit(line["rows_total"], line["vectors_bytes"], line["metadata_bytes"])
        if len(complete) != len(data):
            with open(self.manifest_path, "r+b") as f:
                f.truncate(len(complete))
        return commit

    def _cut_back(self) -> None:
        """Drop whatever follows the last commit (the rows of a file that was not finished)."""
        c = self.commit_state
        for f, size in ((self._vectors, c.vectors_bytes), (self._metadata, c.metadata_bytes)):
            if os.fstat(f.fileno()).st_size < size:
                raise StoreError(f"{self.out}: a row file is shorter than its manifest says; write to another folder")
            f.truncate(size)
            f.seek(size)
        self._write_npy_header()

    def _write_npy_header(self) -> None:
        if self.format == "npy":
            self._vectors.seek(0)
            self._vectors.write(npy_header(self.commit_state.rows, self.dim))
            self._vectors.seek(self.commit_state.vectors_bytes)

    def commit(self, key: str, entry: dict[str, Any], metadata: list[dict[str, Any]], vectors: np.ndarray) -> None:
        """Append one file's rows, then its manifest line (``entry``: what to remember about the file)."""
        if len(metadata) != len(vectors) or (len(vectors) and vectors.shape[1] != self.dim):
            raise StoreError(f"{len(metadata)} rows of metadata for vectors of shape {vectors.shape}")
        if self.format == "npy":
            self._vectors.write(np.ascontiguousarray(vectors, dtype="<f4").tobytes())
        else:
            self._vectors.writelines(json.dumps(row).encode() + b"\n" for row in vectors.tolist())
        self._metadata.writelines(json.dumps(row, ensure_ascii=False).encode() + b"\n" for row in metadata)
        self.commit_state = Commit(self.rows + len(vectors), self._vectors.tell(), self._metadata.tell())
        self._write_npy_header()
        for f in (self._vectors, self._metadata):
            f.flush()
            os.fsync(f.fileno())
        line = {"key": key, **entry, "rows": len(vectors), "rows_total": self.rows,
                "vectors_bytes": self.commit_state.vectors_bytes,
                "metadata_bytes": self.commit_state.metadata_bytes}
        self._manifest.write(json.dumps(line, ensure_ascii=False).encode() + b"\n")
        self._manifest.flush()
        os.fsync(self._manifest.fileno())
        self.finished[key] = line

    def close(self) -> None:
        for f in (self._vectors, self._metadata, self._manifest):
            f.close()
