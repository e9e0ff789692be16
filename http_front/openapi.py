"""``GET /openapi.json``: an OpenAPI 3.0 description of every route, built from the route table.

Each row of http_front/routes.py carries its operation's :class:`Doc` (summary, answers, errors, parameters).
What the row's other columns say is not written again here: the request body comes from ``accepts`` (and,
for JSON, the Doc's ``request`` schema), ``security: []`` and the 401 answer from ``auth``, the OpenAPI path
from the URI template, OpenAI's error shape from the path (http_front/errors.py ``OPENAI_PREFIX``). The spec is
built per request from the live limits and the served model (the ``model`` enum, the ``dimensions`` maximum),
so that what it promises is what this server accepts; tests/integration/test_api.py checks it against the live
server with schemathesis.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import falcon

from embed_common import VERSION
from embed_common.errors import TABLE
from embed_common.status import BrokerStatus
from http_front.errors import OPENAI_PREFIX
from http_front.parsing import MEDIA_TYPES
from http_front.served_models import INPUT_TYPES, served_models
from http_front.state import AppState
from http_front.status_history import SERIES


def ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def json_answer(schema: str | dict[str, Any], description: str) -> dict[str, Any]:
    """A JSON response: ``schema`` names one of the components' schemas, or is a schema itself."""
    return {"description": description,
            "content": {"application/json": {"schema": ref(schema) if isinstance(schema, str) else schema}}}


def text_answer(media_type: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {media_type: {"schema": {"type": "string"}}}}


@dataclass(frozen=True)
class Doc:
    """A route's OpenAPI operation: its summary, its answers by status, the error statuses it may answer (their
    codes and texts come from the error table; 401 is added for the routes that need the key), the JSON schema
    of its request body (for ``accepts="json"``) and its parameters beyond X-Request-ID."""

    summary: str
    answers: Mapping[int, dict[str, Any]]
    errors: tuple[int, ...] = ()
    request: str | None = None
    parameters: tuple[dict[str, Any], ...] = ()


class Documented(Protocol):
    """What the spec reads of a route table row (http_front/routes.py ``Route``)."""

    @property
    def path(self) -> str: ...
    @property
    def methods(self) -> tuple[str, ...]: ...
    @property
    def auth(self) -> str: ...
    @property
    def accepts(self) -> str: ...
    @property
    def doc(self) -> Doc: ...


def _errors(statuses: Iterable[int], openai: bool = False) -> dict[str, Any]:
    schema = "OpenAIError" if openai else "Error"
    return {str(s): json_answer(schema, _STATUS_TEXT[s]) for s in statuses}


def _status_text(status: int) -> str:
    """What an error status means here: its codes and their descriptions from the error table."""
    specs = [spec for spec in TABLE if spec.status == status]
    text = "; ".join(f"{spec.code}: {spec.description}" for spec in specs)
    return text + (" (Retry-After is set)" if any(spec.retry_after for spec in specs) else "")


_STATUS_TEXT = {status: _status_text(status) for status in sorted({spec.status for spec in TABLE})}
EMBED_ERRORS = (400, 413, 422, 500, 503, 504)  # what every embedding route may answer (and 401)
POLICY_ERRORS = (403,)  # what any route may answer (http_front/request_policy.py: Host, Origin); 415 a body's
CHUNK_OPTIONS: dict[str, Any] = {
    "chunk_tokens": {"type": "integer", "minimum": 1, "description": "tokens a chunk at most (default and "
                     "cap: the model's limit less its special tokens)"},
    "overlap_tokens": {"type": "integer", "minimum": 0, "description": "tokens a chunk may share with the one "
                       "before (default: chunk_tokens // 8; cap: chunk_tokens - 1)"},
}
_OPEN: list[dict[str, Any]] = []  # security: none, for the routes open without the key
_PARAMETER = re.compile(r"\{(\w+):\w+\}")  # falcon's "{model:path}" is OpenAPI's "{model}"


def openapi_path(template: str) -> str:
    return _PARAMETER.sub(r"{\1}", template)


def operation(route: Documented, bodies: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI operation of one row; ``bodies``: the request body's schema by ``accepts`` where the row's
    Doc names none (the PDF's, sized by the live limit)."""
    doc = route.doc
    key = route.auth == "key"
    statuses = sorted({*doc.errors, *((401,) if key else ()), *POLICY_ERRORS,
                       *((415,) if route.accepts != "none" else ())})
    op: dict[str, Any] = {"summary": doc.summary}
    if not key:
        op["security"] = _OPEN
    if doc.parameters:
        op["parameters"] = list(doc.parameters)
    if route.accepts != "none":
        schema = ref(doc.request) if doc.request else bodies[route.accepts]
        op["requestBody"] = {"required": True, "content": {MEDIA_TYPES[route.accepts]: {"schema": schema}}}
    op["responses"] = {**{str(status): answer for status, answer in doc.answers.items()},
                       **_errors(statuses, openai=route.path.startswith(OPENAI_PREFIX))}
    return op


def build_spec(state: AppState, routes: Iterable[Documented]) -> dict[str, Any]:
    limits = state.limits
    status = state.client.broker_status() or BrokerStatus()
    dim = status.dim
    text = {"type": "string", "maxLength": limits.max_text_chars}
    texts = {"type": "array", "items": text, "maxItems": limits.max_texts}
    model: dict[str, Any] = {"type": "string", "description": "a served model's alias, id or short name"}
    names = sorted({name for served in served_models(status) if served.kind in ("embed", None)
                    for name in served.names})
    if names:
        model["enum"] = names
    dimensions: dict[str, Any] = {"type": "integer", "minimum": 1,
                                  "description": "keep the first N dimensions, then normalize again"}
    if isinstance(dim, int):
        dimensions["maximum"] = dim
    free_object = {"type": "object", "additionalProperties": True}
    prompts: dict[str, Any] = {  # http_front/served_models.py prompt_of
        "prompt": {"type": "string", "description": "text put before each input (wins over prompt_name)"},
        "input_type": {"type": "string", "enum": sorted(INPUT_TYPES),
                       "description": "the model's query or document prompt, where it has one"}}
    prompt_names = sorted({name for served in served_models(status) for name in served.prompts})
    if prompt_names:  # a model's own (GET /info: models[].prompts); none served: no prompt_name to give
        prompts["prompt_name"] = {"type": "string", "enum": prompt_names, "description": "one of the model's "
                                  "prompts"}
    schemas = {
        "Error": {"type": "object", "required": ["error"], "properties": {"error": {
            "type": "object", "required": ["code", "message"], "additionalProperties": True,
            "properties": {"code": {"type": "string"}, "message": {"type": "string"},
                           "indices": {"type": "array", "items": {"type": "integer"}}}}}},
        "OpenAIError": {"type": "object", "required": ["error"], "properties": {"error": {
            "type": "object", "required": ["message", "type", "code"], "additionalProperties": True,
            "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                           "param": {"type": "string", "nullable": True}, "code": {"type": "string"}}}}},
        "EmbedRequest": {"type": "object", "required": ["texts"], "additionalProperties": False, "properties": {
            "texts": texts,
            "normalize": {"type": "boolean", "default": True, "description": "L2-normalize the vectors"},
            "truncate": {"type": "boolean", "default": True,
                         "description": "cut inputs at the model's token limit; false: 422 INPUT_TOO_LONG"},
            "model": {**model, "description": "which model (default: the first embedding model)"},
            "cache": {"type": "boolean", "default": True,
                      "description": "false: neither read nor write the vector cache (as the X-Embed-Cache: off "
                      "header)"}, **prompts}},
        "EmbedResponse": {"type": "object", "required": ["vectors"], "properties": {
            "vectors": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}},
            "truncated": {"type": "array", "items": {"type": "integer"},
                          "description": "indices of inputs cut at the token limit; present only when any"}}},
        "Health": {"type": "object", "required": ["status", "workers"], "properties": {
            "status": {"type": "string", "enum": ["ok", "starting", "no_workers", "broker_unreachable",
                                                  "shutting_down"]},
            "model": {"type": "string", "nullable": True}, "model_id": {"type": "string", "nullable": True},
            "dim": {"type": "integer", "nullable": True}, "device": {"type": "string", "nullable": True},
            "workers": {"type": "array", "items": free_object},
            "models": {"type": "array", "items": free_object, "description": "every model, the default first"}}},
        "Info": {"type": "object", "required": ["version", "limits", "workers"], "properties": {
            "model_id": {"type": "string", "nullable": True}, "dim": {"type": "integer", "nullable": True},
            "max_tokens": {"type": "integer", "nullable": True}, "version": {"type": "string"},
            "precision": {"type": "array", "items": {"type": "string"}, "nullable": True},
            "backend": {"type": "array", "items": {"type": "string"}, "nullable": True,
                        "description": "the engines the workers serve on (docs/engine.md)"},
            "cosine": {"type": "number", "nullable": True, "description": "the least cosine of a worker's vectors "
                       "to fp32 sentence-transformers' on its fidelity check"},
            "limits": free_object, "workers": {"type": "array", "items": free_object},
            "models": {"type": "array", "items": free_object, "description": "every model, the default first"},
            "cache": {**free_object, "nullable": True, "description": "the vector cache's hits, misses, writes, "
                      "evictions, entries, bytes and bound; null when it is off"}}},
        "Probe": {"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}},
        "EmbeddingsRequest": {"type": "object", "required": ["input", "model"], "additionalProperties": False,
                              "properties": {
            "input": {"oneOf": [text, texts]},
            "model": model,
            "encoding_format": {"type": "string", "enum": ["float", "base64"], "default": "float"},
            "dimensions": dimensions,
            "user": {"type": "string"},
            "truncate": {"type": "boolean", "default": True, "description": "extension: false refuses to cut"},
            **prompts}},
        "EmbeddingsResponse": {"type": "object", "required": ["object", "data", "model", "usage"], "properties": {
            "object": {"type": "string", "enum": ["list"]},
            "data": {"type": "array", "items": {"type": "object", "required": ["object", "index", "embedding"],
                                                "properties": {
                "object": {"type": "string", "enum": ["embedding"]}, "index": {"type": "integer"},
                "embedding": {"oneOf": [{"type": "array", "items": {"type": "number"}},
                                        {"type": "string", "description": "base64 of little-endian float32"}]}}}},
            "model": {"type": "string"},
            "usage": {"type": "object", "required": ["prompt_tokens", "total_tokens"], "properties": {
                "prompt_tokens": {"type": "integer"}, "total_tokens": {"type": "integer"}}}}},
        "Model": {"type": "object", "required": ["id", "object", "created", "owned_by"], "properties": {
            "id": {"type": "string"}, "object": {"type": "string", "enum": ["model"]},
            "created": {"type": "integer"}, "owned_by": {"type": "string"}}},
        "ModelList": {"type": "object", "required": ["object", "data"], "properties": {
            "object": {"type": "string", "enum": ["list"]},
            "data": {"type": "array", "items": {"$ref": "#/components/schemas/Model"}}}},
        # http_front/rerank_api.py
        "RerankRequest": {"type": "object", "required": ["query", "texts"], "additionalProperties": False,
                          "properties": {
            "query": text, "texts": texts, "model": {"type": "string", "description": "a reranker (default: the "
                                                                                         "first)"},
            "raw_scores": {"type": "boolean", "default": False, "description": "logits, without the activation"},
            "return_text": {"type": "boolean", "default": False},
            "truncate": {"type": "boolean", "default": True, "description": "false: 422 INPUT_TOO_LONG"},
            "truncation_direction": {"type": "string", "enum": ["right", "Right"]}}},
        "RerankResponse": {"type": "array", "items": {"type": "object", "required": ["index", "score"],
                                                      "properties": {
            "index": {"type": "integer"}, "score": {"type": "number"}, "text": {"type": "string"}}}},
        "CohereRerankRequest": {"type": "object", "required": ["query", "documents"], "additionalProperties": False,
                                "properties": {
            "query": text, "model": {"type": "string"},
            "documents": {"type": "array", "maxItems": limits.max_texts,
                          "items": {"oneOf": [text, {"type": "object", "required": ["text"],
                                                     "properties": {"text": text}}]}},
            "top_n": {"type": "integer", "minimum": 1}, "return_documents": {"type": "boolean", "default": False},
            "max_chunks_per_doc": {"type": "integer", "minimum": 1},
            "max_tokens_per_doc": {"type": "integer", "minimum": 1}, "priority": {"type": "integer"}}},
        "CohereRerankResponse": {"type": "object", "required": ["results"], "properties": {
            "id": {"type": "string"}, "model": {"type": "string", "nullable": True},
            "results": {"type": "array", "items": {"type": "object", "required": ["index", "relevance_score"],
                                                   "properties": {
                "index": {"type": "integer"}, "relevance_score": {"type": "number"},
                "document": {"type": "object", "properties": {"text": {"type": "string"}}}}}},
            "usage": {"type": "object", "properties": {"prompt_tokens": {"type": "integer"},
                                                       "total_tokens": {"type": "integer"}}},
            "meta": free_object}},
        # http_front/tokenize_api.py
        "TokenizeRequest": {"type": "object", "required": ["texts"], "additionalProperties": False, "properties": {
            "texts": texts, "model": {**model, "description": "which model (default: the first embedding model)"},
            "return_ids": {"type": "boolean", "default": False, "description": "the ids the model is fed too"},
            **prompts}},
        "TokenizeResponse": {"type": "object", "required": ["counts", "max_tokens", "truncated"], "properties": {
            "model": {"type": "string", "nullable": True},
            "max_tokens": {"type": "integer", "nullable": True, "description": "the window: a longer text is cut"},
            "counts": {"type": "array", "items": {"type": "integer"},
                       "description": "each text's tokens, its prompt's and the special tokens included, none cut"},
            "truncated": {"type": "array", "items": {"type": "integer"}, "description": "texts over the window"},
            "ids": {"type": "array", "items": {"type": "array", "items": {"type": "integer"}}}}},
        # http_front/documents.py
        "ChunksRequest": {"type": "object", "required": ["texts"], "additionalProperties": False, "properties": {
            "texts": texts, **CHUNK_OPTIONS,
            "normalize": {"type": "boolean", "default": True, "description": "L2-normalize the vectors"},
            "model": {**model, "description": "which model (default: the first embedding model)"}, **prompts}},
        "Chunk": {"type": "object", "required": ["text", "start", "end"], "properties": {
            "page": {"type": "integer", "description": "/embed/pdf: the chunk's page, from 1"},
            "index": {"type": "integer", "description": "/embed/chunks: the index of the chunk's text"},
            "text": {"type": "string"},
            "start": {"type": "integer", "description": "offset of its first character in its page or text"},
            "end": {"type": "integer", "description": "offset after its last character"}}},
        "ChunksResponse": {"type": "object", "required": ["chunks", "vectors"], "properties": {
            "chunks": {"type": "array", "items": {"$ref": "#/components/schemas/Chunk"}},
            "vectors": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}}}},
        "PdfResponse": {"type": "object", "required": ["pages", "text_layer", "pages_without_text", "chunks",
                                                       "vectors"], "properties": {
            "pages": {"type": "integer"},
            "text_layer": {"type": "boolean", "description": "false: no page has text (a scan); OCR it first"},
            "pages_without_text": {"type": "array", "items": {"type": "integer"}},
            "chunks": {"type": "array", "items": {"$ref": "#/components/schemas/Chunk"}},
            "vectors": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}}}},
        # http_front/status_page.py
        "StatusData": _status_schema(free_object),
    }

    bodies = {"pdf": {"type": "string", "format": "binary", "maxLength": limits.max_body_bytes}}
    paths: dict[str, Any] = {}
    for route in routes:
        item = paths.setdefault(openapi_path(route.path), {})
        for method in route.methods:
            item[method.lower()] = operation(route, bodies)
        item["parameters"] = [{"$ref": "#/components/parameters/RequestId"}]
    return {
        "openapi": "3.0.3",
        "info": {"title": "embed-cluster", "version": VERSION,
                 "description": "Text embeddings from a cluster of sentence-transformers workers. Every response "
                                "echoes X-Request-ID (or a new one). When the server has an API key, send "
                                "'Authorization: Bearer <key>'."},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "parameters": {"RequestId": {"name": "X-Request-ID", "in": "header", "required": False,
                                         "description": "echoed, and logged with the request",
                                         "schema": {"type": "string"}}},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}, {}],  # the key is needed only when the server has one
    }


def _status_schema(free_object: dict[str, Any]) -> dict[str, Any]:
    number = {"type": "number", "nullable": True}
    integer = {"type": "integer", "nullable": True}
    text = {"type": "string", "nullable": True}
    worker = {"type": "object", "required": ["id", "state"], "properties": {
        "id": {"type": "string"},
        "state": {"type": "string", "enum": ["ready", "busy", "restarting", "failed", "left"]},
        "reason": text, "host": text, "remote": {"type": "boolean", "nullable": True}, "device": text,
        "precision": text, "backend": text, "cosine": number, "pid": integer,
        "texts_per_s": {**number, "description": "texts served per second over the last 5 samples"},
        "speed": {**number, "description": "the worker's own measure of its compute rate, texts/s"},
        "served_texts": integer, "restarts": {"type": "integer"}, "credit": integer, "inflight_texts": integer,
        "since": {**number, "description": "epoch seconds it went down or left"}}}
    event = {"type": "object", "required": ["t", "kind", "text"], "properties": {
        "t": {"type": "number"}, "kind": {"type": "string"}, "worker": text, "text": {"type": "string"}}}
    series = {"type": "array", "items": {"type": "number", "nullable": True}}
    return {"type": "object", "required": ["status", "version", "now", "uptime_s", "limits", "interval", "window",
                                           "history", "events", "workers"], "properties": {
        "status": {"type": "string", "enum": ["ok", "starting", "no_workers", "broker_unreachable",
                                              "shutting_down"]},
        "model_id": text, "model": text, "dim": integer,
        "precision": {"type": "array", "items": {"type": "string"}, "nullable": True},
        "backend": {"type": "array", "items": {"type": "string"}, "nullable": True},
        "cosine": {**number, "description": "the least cosine of a worker's vectors to fp32 sentence-transformers' "
                   "on its fidelity check"},
        "max_tokens": integer, "version": {"type": "string"}, "now": {"type": "number"},
        "uptime_s": {"type": "number"}, "limits": free_object, "queue_texts": integer, "queue_jobs": integer,
        "cache": {**free_object, "nullable": True, "description": "the vector cache's hits, misses, writes, "
                  "evictions, entries, bytes and bound; null when it is off"},
        "interval": {"type": "number", "description": "seconds between samples"},
        "window": {"type": "number", "description": "seconds of history kept"},
        "history": {"type": "object", "required": ["t", *SERIES], "description": "one column per series, "
                    "oldest first; null where there was no data (no broker status, no request)",
                    "properties": {name: series for name in ("t", *SERIES)}},
        "events": {"type": "array", "items": event, "description": "newest first"},
        "workers": {"type": "array", "items": worker}}}


class OpenApiSpec:
    def __init__(self, state: AppState, routes: Iterable[Documented]) -> None:
        self.state = state
        self.routes = tuple(routes)

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = build_spec(self.state, self.routes)
