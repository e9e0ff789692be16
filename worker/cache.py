"""The worker's disk cache, one home for its layout and its keys: ``$XDG_CACHE_HOME/embed-cluster/<kind>/``
(``~/.cache`` by default), each entry named by :func:`content_key` of what it was made from, never by where
the model lies, so that one model's copies share an entry and changed files or packages get another.

Three kinds use it: ``fingerprint``, a model directory's :func:`weights_fingerprint`; ``onnx``, a model's
export (worker/onnx_backend.py ``cache_dir``); and ``engine``, each candidate engine's measurement and the
reference vectors they are checked against (worker/engine_select.py ``measurement_key``, ``reference_file``).
Each says which parts make its key; the recipe that turns parts into a key, and the model's fingerprint among
them, live here.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from importlib import metadata
from pathlib import Path

from embed_common.cache_dir import cache_root


def content_key(*parts: str) -> str:
    """An entry's name: a digest of the parts it was made from, in order."""
    key = hashlib.blake2b(digest_size=12)
    for part in parts:
        key.update(part.encode() + b"\0")
    return key.hexdigest()


def package_version(name: str) -> str:
    """An installed package's version, ``none`` where it is not installed: a part of a key."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "none"


def _read_by_model(rel: str) -> bool:
    """Whether a model directory's file is one the worker reads: not another runtime's copy (neither the export
    nor torch reads them)."""
    return not (rel.startswith(("onnx/", "openvino/")) or rel.endswith((".onnx", ".h5", ".msgpack", ".ot")))


def model_fingerprint(root: Path) -> str:
    """A digest of the model directory's contents, wherever it lies: each file's name and size, the whole of
    small files (configs, tokenizer) and the first and last MiB of large ones (weights), so that one model
    copied or downloaded again maps to the same entry, and changed weights to another."""
    digest = hashlib.blake2b(digest_size=16)
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = file.relative_to(root).as_posix()
        if not _read_by_model(rel):
            continue
        size = file.stat().st_size
        digest.update(f"{rel}\0{size}\0".encode())
        with file.open("rb") as f:
            if size <= 4 << 20:
                digest.update(f.read())
            else:
                digest.update(f.read(1 << 20))
                f.seek(-(1 << 20), os.SEEK_END)
                digest.update(f.read())
    return digest.hexdigest()


def _identity(stat: os.stat_result) -> list[int]:
    return [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino]


def weights_fingerprint(root: Path) -> str:
    """A digest of the whole of every model file the worker reads (what the front's vector cache keys on: a
    vector is never served for other weights, wherever in a file they differ). It reads the model once more,
    so it is kept per directory in ``fingerprint/`` with each file's size, change time and inode, and read
    again only when one of them changes."""
    files = sorted(p for p in root.rglob("*") if p.is_file() and _read_by_model(p.relative_to(root).as_posix()))
    stats = [[f.relative_to(root).as_posix(), *_identity(f.stat())] for f in files]
    memo = cache_root("fingerprint") / f"{content_key(str(root.resolve()))}.json"
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        known = json.loads(memo.read_text(encoding="utf-8"))
        if known["files"] == stats and isinstance(known["digest"], str):
            return known["digest"]
    digest = hashlib.blake2b(digest_size=16)
    for file, (rel, size, *_) in zip(files, stats, strict=True):
        digest.update(f"{rel}\0{size}\0".encode())
        with file.open("rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
    value = digest.hexdigest()
    with contextlib.suppress(OSError):
        memo.parent.mkdir(parents=True, exist_ok=True)
        partial = memo.with_name(f".{memo.name}.{os.getpid()}")
        partial.write_text(json.dumps({"files": stats, "digest": value}), encoding="utf-8")
        os.replace(partial, memo)
    return value
