"""The worker's disk cache, one home for its layout and its keys: ``$XDG_CACHE_HOME/embed-cluster/<kind>/``
(``~/.cache`` by default), each entry named by :func:`content_key` of what it was made from, never by where
the model lies, so that one model's copies share an entry and changed files or packages get another.

Two kinds use it: ``onnx``, a model's export (worker/onnx_backend.py ``cache_dir``), and ``precision``,
``--precision auto``'s timed choice (worker/embedder.py ``precision_cache_file``). Each says which parts
make its key; the recipe that turns parts into a key, and the model's fingerprint among them, live here.
"""

from __future__ import annotations

import hashlib
import os
from importlib import metadata
from pathlib import Path


def cache_root(kind: str) -> Path:
    """The directory of one kind of entry: ``$XDG_CACHE_HOME/embed-cluster/<kind>``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "embed-cluster" / kind


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


def model_fingerprint(root: Path) -> str:
    """A digest of the model directory's contents, wherever it lies: each file's name and size, the whole of
    small files (configs, tokenizer) and the first and last MiB of large ones (weights), so that one model
    copied or downloaded again maps to the same entry, and changed weights to another."""
    digest = hashlib.blake2b(digest_size=16)
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = file.relative_to(root).as_posix()
        if rel.startswith(("onnx/", "openvino/")) or rel.endswith((".onnx", ".h5", ".msgpack", ".ot")):
            continue  # other runtimes' copies: neither the export nor torch reads them
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
