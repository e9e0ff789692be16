"""``GET /openapi.json``: an OpenAPI 3.0 description of every route, written by hand.

The spec is built per request from the live limits and the served model (the ``model`` enum and the
``dimensions`` maximum), so that what it promises is what this server accepts; tests/integration/test_api.py
checks it against the live server with schemathesis. A route added to the front is added here too.
"""

from __future__ import annotations

from typing import Any

import falcon

from embed_common import VERSION
from embed_common.errors import TABLE
from embed_common.status import BrokerStatus
from http_front.app import AppState
from http_front.status_page import ASSETS, SERIES


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(statuses: tuple[int, ...], openai: bool = False) -> dict[str, Any]:
    ref = {"$ref": "#/components/schemas/OpenAIError" if openai else "#/components/schemas/Error"}
    return {str(s): _json(ref, _STATUS_TEXT[s]) for s in statuses}


def _status_text(status: int) -> str:
    """What an error status means here: its codes and their descriptions from the error table."""
    specs = [spec for spec in TABLE if spec.status == status]
    text = "; ".join(f"{spec.code}: {spec.description}" for spec in specs)
    return text + (" (Retry-After is set)" if any(spec.retry_after for spec in specs) else "")


_STATUS_TEXT = {status: _status_text(status) for status in sorted({spec.status for spec in TABLE})}
_EMBED_ERRORS = (400, 401, 413, 422, 500, 503, 504)
_CHUNK_OPTIONS: dict[str, Any] = {
    "chunk_tokens": {"type": "integer", "minimum": 1, "description": "tokens a chunk at most (default and "
                     "cap: the model's limit less its special tokens)"},
    "overlap_tokens": {"type": "integer", "minimum": 0, "description": "tokens a chunk may share with the one "
                       "before (default: chunk_tokens // 8; cap: chunk_tokens - 1)"},
}
_OPEN: list[dict[str, Any]] = []  # security: none, for the probes and this spec


def build_spec(state: AppState) -> dict[str, Any]:
    limits = state.limits
    status = state.client.broker_status() or BrokerStatus()
    model_id, model_name, dim = status.model, status.model_name, status.dim
    text = {"type": "string", "maxLength": limits.max_text_chars}
    texts = {"type": "array", "items": text, "maxItems": limits.max_texts}
    model: dict[str, Any] = {"type": "string", "description": "the served model's id or short name"}
    if model_id:
        model["enum"] = sorted({model_id, model_name or model_id})
    dimensions: dict[str, Any] = {"type": "integer", "minimum": 1,
                                  "description": "keep the first N dimensions, then normalize again"}
    if isinstance(dim, int):
        dimensions["maximum"] = dim
    free_object = {"type": "object", "additionalProperties": True}
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
                         "description": "cut inputs at the model's token limit; false: 422 INPUT_TOO_LONG"}}},
        "EmbedResponse": {"type": "object", "required": ["vectors"], "properties": {
            "vectors": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}},
            "truncated": {"type": "array", "items": {"type": "integer"},
                          "description": "indices of inputs cut at the token limit; present only when any"}}},
        "Health": {"type": "object", "required": ["status", "workers"], "properties": {
            "status": {"type": "string", "enum": ["ok", "starting", "no_workers", "broker_unreachable",
                                                  "shutting_down"]},
            "model": {"type": "string", "nullable": True}, "model_id": {"type": "string", "nullable": True},
            "dim": {"type": "integer", "nullable": True}, "device": {"type": "string", "nullable": True},
            "workers": {"type": "array", "items": free_object}}},
        "Info": {"type": "object", "required": ["version", "limits", "workers"], "properties": {
            "model_id": {"type": "string", "nullable": True}, "dim": {"type": "integer", "nullable": True},
            "max_tokens": {"type": "integer", "nullable": True}, "version": {"type": "string"},
            "limits": free_object, "workers": {"type": "array", "items": free_object}}},
        "Probe": {"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}},
        "EmbeddingsRequest": {"type": "object", "required": ["input", "model"], "additionalProperties": False,
                              "properties": {
            "input": {"oneOf": [text, texts]},
            "model": model,
            "encoding_format": {"type": "string", "enum": ["float", "base64"], "default": "float"},
            "dimensions": dimensions,
            "user": {"type": "string"},
            "truncate": {"type": "boolean", "default": True, "description": "extension: false refuses to cut"}}},
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
        # http_front/documents.py
        "ChunksRequest": {"type": "object", "required": ["texts"], "additionalProperties": False, "properties": {
            "texts": texts, **_CHUNK_OPTIONS,
            "normalize": {"type": "boolean", "default": True, "description": "L2-normalize the vectors"}}},
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

    def ref(name: str) -> dict[str, Any]:
        return {"$ref": f"#/components/schemas/{name}"}

    def body(name: str) -> dict[str, Any]:
        return {"required": True, "content": {"application/json": {"schema": ref(name)}}}

    paths: dict[str, Any] = {
        "/health": {"get": {"summary": "the seed's health check: 200 once a worker can serve",
                            "responses": {"200": _json(ref("Health"), "a worker can serve"),
                                          "503": _json(ref("Health"), "not (yet) able to serve"),
                                          **_errors((401,))}}},
        "/info": {"get": {"summary": "model, limits and workers",
                          "responses": {"200": _json(ref("Info"), "the cluster"), **_errors((401,))}}},
        "/embed": {"post": {"summary": "the seed's embedding call", "requestBody": body("EmbedRequest"),
                            "responses": {"200": _json(ref("EmbedResponse"), "one vector per text, in order"),
                                          **_errors(_EMBED_ERRORS)}}},
        "/v1/embeddings": {"post": {"summary": "OpenAI-compatible embeddings",
                                    "requestBody": body("EmbeddingsRequest"),
                                    "responses": {"200": _json(ref("EmbeddingsResponse"), "the embeddings"),
                                                  **_errors((*_EMBED_ERRORS, 404), openai=True)}}},
        "/v1/models": {"get": {"summary": "the served model, OpenAI-style",
                               "responses": {"200": _json(ref("ModelList"), "the models"),
                                             **_errors((401,), openai=True)}}},
        "/v1/models/{model}": {"get": {
            "summary": "one model, OpenAI-style",
            "parameters": [{"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": {"200": _json(ref("Model"), "the model"), **_errors((401, 404, 503), openai=True)}}},
        "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {
            "200": {"description": "the text exposition format", "content": {"text/plain": {
                "schema": {"type": "string"}}}}, **_errors((401,))}}},
        "/livez": {"get": {"summary": "the front's process is up", "security": _OPEN,
                           "responses": {"200": _json(ref("Probe"), "alive")}}},
        "/readyz": {"get": {"summary": "a worker can serve", "security": _OPEN,
                            "responses": {"200": _json(ref("Probe"), "ready"),
                                          "503": _json(ref("Probe"), "not ready")}}},
        "/openapi.json": {"get": {"summary": "this document", "security": _OPEN,
                                  "responses": {"200": _json({"type": "object"}, "the OpenAPI document")}}},
        "/embed/pdf": {"post": {
            "summary": "a PDF's text, page by page, in chunks of at most chunk_tokens tokens, and their vectors",
            "parameters": [{"name": name, "in": "query", "required": False, "schema": schema}
                           for name, schema in (*_CHUNK_OPTIONS.items(), ("normalize", {"type": "boolean"}))],
            "requestBody": {"required": True, "content": {"application/pdf": {"schema": {
                "type": "string", "format": "binary", "maxLength": limits.max_body_bytes}}}},
            "responses": {"200": _json(ref("PdfResponse"), "the chunks of every page, in order"),
                          **_errors((400, 401, 413, 415, 422, 500, 503, 504))}}},
        "/embed/chunks": {"post": {
            "summary": "texts in chunks of at most chunk_tokens tokens, and their vectors",
            "requestBody": body("ChunksRequest"),
            "responses": {"200": _json(ref("ChunksResponse"), "the chunks of every text, in order"),
                          **_errors(_EMBED_ERRORS)}}},
        "/status": {"get": {"summary": "the live status page (an HTML shell; its data comes from /status.json)",
                            "security": _OPEN, "responses": {"200": {"description": "the page", "content": {
                                "text/html": {"schema": {"type": "string"}}}}}}},
        "/status/assets/{name}": {"get": {
            "summary": "the status page's script and style sheet", "security": _OPEN,
            "parameters": [{"name": "name", "in": "path", "required": True,
                            "schema": {"type": "string", "enum": sorted(ASSETS)}}],
            "responses": {"200": {"description": "the file", "content": {
                kind.split(";")[0]: {"schema": {"type": "string"}} for kind in sorted(set(ASSETS.values()))}},
                          "404": _json(ref("Error"), "NOT_FOUND: no such file")}}},
        "/status.json": {"get": {"summary": "the status page's data: the cluster now, its last 10 minutes, events",
                                 "responses": {"200": _json(ref("StatusData"), "the status"),
                                               **_errors((401,))}}},
    }
    for item in paths.values():
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
        "precision": text, "pid": integer,
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
        "max_tokens": integer, "version": {"type": "string"}, "now": {"type": "number"},
        "uptime_s": {"type": "number"}, "limits": free_object, "queue_texts": integer, "queue_jobs": integer,
        "interval": {"type": "number", "description": "seconds between samples"},
        "window": {"type": "number", "description": "seconds of history kept"},
        "history": {"type": "object", "required": ["t", *SERIES], "description": "one column per series, "
                    "oldest first; null where there was no data (no broker status, no request)",
                    "properties": {name: series for name in ("t", *SERIES)}},
        "events": {"type": "array", "items": event, "description": "newest first"},
        "workers": {"type": "array", "items": worker}}}


class OpenApiSpec:
    def __init__(self, state: AppState) -> None:
        self.state = state

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = build_spec(self.state)
