"""The models this cluster serves, as the front reads them from the broker's status, and which one a request
names: by its alias, its id or its short name (embed_common/models.py); none named: the first of the kind the
route serves (an embedding route, the default model; a rerank route, the first reranker).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from embed_common.status import BrokerStatus
from http_front.errors import ApiError

EMBED = "embed"
RERANK = "rerank"
KIND_NAMES = {EMBED: "an embedding model", RERANK: "a reranker (cross-encoder)"}  # each with its article


@dataclass(frozen=True)
class Served:
    """One served model, as the broker's status describes its pool."""

    alias: str | None  # the pool's name, which a job carries; None: the broker's default (no status yet)
    model_id: str | None
    name: str | None  # the short name
    kind: str | None = EMBED  # None: not known yet (no worker of it has registered)
    dim: int | None = None
    max_tokens: int | None = None
    prompts: dict[str, str] = field(default_factory=dict)  # sentence-transformers' prompts (prompt name -> text)
    default_prompt_name: str | None = None
    workers: int = 0
    ever_ready: bool = False

    @property
    def names(self) -> set[str]:
        return {n for n in (self.alias, self.model_id, self.name) if n}

    @classmethod
    def of(cls, pool: dict[str, Any]) -> Served:
        def text(name: str) -> str | None:
            value = pool.get(name)
            return value if isinstance(value, str) and value else None

        def number(name: str) -> int | None:
            value = pool.get(name)
            return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None

        prompts = pool.get("prompts")
        prompts = {k: v for k, v in prompts.items() if isinstance(k, str) and isinstance(v, str)} \
            if isinstance(prompts, dict) else {}
        return cls(text("alias"), text("model"), text("model_name"), text("kind"), number("dim"),
                   number("max_tokens"), prompts, text("default_prompt_name"), number("workers") or 0,
                   pool.get("ever_ready") is True)

    def card(self) -> dict[str, Any]:
        """What /info and /health say of it."""
        return {"alias": self.alias, "model_id": self.model_id, "model": self.name, "kind": self.kind,
                "dim": self.dim, "max_tokens": self.max_tokens, "workers": self.workers,
                "prompts": sorted(self.prompts), "default_prompt_name": self.default_prompt_name}


def served_models(status: BrokerStatus | None) -> list[Served]:
    """Every model the broker has a pool for, the default first; a broker that lists none (an older one) serves
    the one its seed fields name."""
    status = status or BrokerStatus()
    if status.models:
        return [Served.of(pool) for pool in status.models]
    if status.model:
        return [Served(status.model_name, status.model, status.model_name, EMBED, status.dim, status.max_tokens,
                       workers=len(status.workers), ever_ready=status.ever_ready)]
    return []


def resolve(status: BrokerStatus | None, requested: str | None, kind: str = EMBED) -> Served:
    """The model a request names (None: the first served of ``kind``); MODEL_NOT_FOUND when none is called so,
    BAD_REQUEST when it is not of ``kind``. Before the broker has said what it serves, a request that names no
    model goes to the broker's default pool; one that names a model gets NO_WORKERS. A route whose kind the
    cluster does not serve at all (a rerank with no reranker) gets MODEL_NOT_FOUND too."""
    models = served_models(status)
    if requested is None:
        found = next((m for m in models if m.kind == kind), None) or next((m for m in models if m.kind is None), None)
        if found is not None:
            return found
        if not models or not any(m.model_id for m in models):
            return Served(None, None, None, kind)  # the broker says (its default pool, or NO_WORKERS)
        raise ApiError("MODEL_NOT_FOUND", f"this cluster serves no {KIND_NAMES.get(kind, kind)[3:]}; it serves "
                       f"{', '.join(describe(m) for m in models)}", param="model")
    found = next((m for m in models if requested in m.names), None)
    if found is None:
        if not any(m.model_id for m in models):
            raise ApiError("NO_WORKERS", "no worker has registered yet (the model may still be loading)")
        raise ApiError("MODEL_NOT_FOUND", f"the model {requested[:200]!r} is not served here; this cluster serves "
                       f"{', '.join(describe(m) for m in models)}", param="model")
    if found.kind not in (kind, None):  # not known yet: its worker answers, once it has registered
        raise ApiError("BAD_REQUEST", f"the model {requested[:200]!r} is {KIND_NAMES.get(found.kind, found.kind)}, "
                       f"not {KIND_NAMES.get(kind, kind)}", param="model")
    return found


def describe(model: Served) -> str:
    if model.alias and model.model_id and model.alias != model.name:
        return f"{model.alias!r} ({model.model_id!r})"
    return repr(model.model_id or model.alias)


def model_param(body: dict[str, Any], name: str = "model") -> str | None:
    """A request's optional ``model`` field, checked."""
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise ApiError("BAD_REQUEST", f"'{name}' must be a string", param=name)
    return value


PROMPT_FIELDS = {"prompt_name", "prompt", "input_type"}
INPUT_TYPES = {"query": ("query",), "search_query": ("query",), "document": ("document", "passage"),
               "search_document": ("document", "passage"), "passage": ("passage", "document")}


def prompt_of(model: Served, body: dict[str, Any]) -> str | None:
    """The prompt a request's texts are encoded with, as sentence-transformers' ``encode`` picks it: ``prompt``
    (the text itself) first, else ``prompt_name`` (one of the model's ``prompts``), else an ``input_type``
    (query or document, and Cohere's search_query / search_document) mapped to the model's prompt of that name
    where it has one, else the model's ``default_prompt_name``; None: no prompt."""
    prompt, name, input_type = body.get("prompt"), body.get("prompt_name"), body.get("input_type")
    for field_name, value in (("prompt", prompt), ("prompt_name", name), ("input_type", input_type)):
        if value is not None and not isinstance(value, str):
            raise ApiError("BAD_REQUEST", f"'{field_name}' must be a string", param=field_name)
    if input_type is not None and input_type not in INPUT_TYPES:  # checked even where a prompt takes precedence
        raise ApiError("BAD_REQUEST", f"'input_type' must be one of {', '.join(sorted(INPUT_TYPES))}",
                       param="input_type")
    if prompt is not None:
        return prompt or None
    if name is not None:
        if name not in model.prompts:
            known = ", ".join(sorted(model.prompts)) or "none"
            raise ApiError("BAD_REQUEST", f"the model has no prompt {name[:100]!r} (its prompts: {known})",
                           param="prompt_name")
        return model.prompts[name] or None
    if input_type is not None:
        found = next((model.prompts[n] for n in INPUT_TYPES[input_type] if n in model.prompts), None)
        return found or None
    if model.default_prompt_name is not None:
        return model.prompts.get(model.default_prompt_name) or None
    return None
