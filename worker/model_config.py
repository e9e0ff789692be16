"""What a worker reads of a model's own files before it loads it: whether it is an embedding model or a
reranker (a cross-encoder), and the prompts its sentence-transformers config names. No torch here: the
worker's READY carries these to the broker, whose status gives them to the front.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RERANK = "rerank"
EMBED = "embed"


def _json(path: Path) -> dict[str, Any]:
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def model_kind(path: str | Path) -> str:
    """``rerank`` for a cross-encoder's directory, else ``embed``: what sentence-transformers saved it as
    (``config_sentence_transformers.json``'s ``model_type``), or, for a plain Hugging Face directory (no
    ``modules.json``), a sequence-classification architecture."""
    root = Path(path)
    model_type = _json(root / "config_sentence_transformers.json").get("model_type")
    if model_type is not None:
        return RERANK if model_type == "CrossEncoder" else EMBED
    if not (root / "modules.json").is_file() and (root / "config.json").is_file():
        architectures = _json(root / "config.json").get("architectures")
        if isinstance(architectures, list) and any(str(a).endswith("ForSequenceClassification")
                                                   for a in architectures):
            return RERANK
    return EMBED


def prompts(path: str | Path) -> tuple[dict[str, str], str | None]:
    """The model's ``prompts`` (name -> text) and ``default_prompt_name``, from its sentence-transformers config
    (``config_sentence_transformers.json``), as ``SentenceTransformer`` reads them."""
    config = _json(Path(path) / "config_sentence_transformers.json")
    found = config.get("prompts")
    named = {k: v for k, v in found.items() if isinstance(k, str) and isinstance(v, str)} \
        if isinstance(found, dict) else {}
    default = config.get("default_prompt_name")
    return named, default if isinstance(default, str) and default in named else None


def ready_info(path: str | Path) -> dict[str, Any]:
    """What the worker's READY says of its model besides its name: its kind and its prompts."""
    named, default = prompts(path)
    return {"kind": model_kind(path), "prompts": named, "default_prompt_name": default}
