"""OpenAI-compatible routes: ``POST /v1/embeddings``, ``GET /v1/models`` and ``GET /v1/models/{model}``.

Requests and responses follow OpenAI's embeddings API, so its SDKs and the tools built on them work unchanged:
``input`` (a string or a list of strings), ``model`` (this cluster's model id or short name), ``encoding_format``
(``float``, or ``base64``: little-endian float32, what the official SDK asks for by default), ``dimensions``
(the first N dimensions, normalized again), ``user`` (accepted, unused). Vectors are always L2-normalized.
Over-long inputs are truncated at the model's token limit unless the request says ``"truncate": false`` (an
extension: then 422 INPUT_TOO_LONG names them). Errors under /v1/ come in OpenAI's shape
(http_front/errors.py ``ApiError.openai_body``).
"""

from __future__ import annotations

import base64
from typing import Any

import falcon
import numpy as np

from embed_common.protocol import JobOptions
from embed_common.vectors import normalize_rows
from http_front.embed_cache import CACHE_HEADER, header_allows
from http_front.errors import ApiError
from http_front.parsing import check_texts, read_json
from http_front.served_models import EMBED, PROMPT_FIELDS, prompt_of, resolve, served_models
from http_front.state import AppState

FIELDS = {"input", "model", "encoding_format", "dimensions", "user", "truncate", *PROMPT_FIELDS}
OWNER = "embed-cluster"


def parse_input(value: Any, state: AppState) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if isinstance(value, list) and value and all(isinstance(v, (int, list)) for v in value):
        raise ApiError("BAD_REQUEST", "token arrays are not supported: send 'input' as strings", param="input")
    try:
        return check_texts(value, state.limits, field_name="input")
    except ApiError as exc:
        raise ApiError(exc.code, exc.message + " (or a string)", param="input") from None


def model_card(model_id: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": 0, "owned_by": OWNER}


class Embeddings:
    def __init__(self, state: AppState) -> None:
        self.state = state

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = read_json(req, self.state.limits)
        if not isinstance(body, dict):
            raise ApiError("BAD_REQUEST", "the body must be a JSON object")
        unknown = sorted(set(body) - FIELDS)
        if unknown:
            raise ApiError("BAD_REQUEST", f"unrecognized request argument(s): {', '.join(unknown)}",
                           param=unknown[0])
        for name in ("input", "model"):
            if name not in body:
                raise ApiError("BAD_REQUEST", f"'{name}' is required", param=name)
        if not isinstance(body["model"], str):
            raise ApiError("BAD_REQUEST", "'model' must be a string", param="model")
        texts = parse_input(body["input"], self.state)
        encoding = body.get("encoding_format", "float")
        if encoding not in ("float", "base64"):
            raise ApiError("BAD_REQUEST", "'encoding_format' must be 'float' or 'base64'", param="encoding_format")
        dimensions = body.get("dimensions")
        if dimensions is not None and (not isinstance(dimensions, int) or isinstance(dimensions, bool)
                                       or dimensions < 1):
            raise ApiError("BAD_REQUEST", "'dimensions' must be a positive integer", param="dimensions")
        truncate = body.get("truncate", True)
        if not isinstance(truncate, bool):
            raise ApiError("BAD_REQUEST", "'truncate' must be true or false", param="truncate")
        model = resolve(self.state.client.broker_status(), body["model"], EMBED)
        if model.model_id is None:
            raise ApiError("NO_WORKERS", "no worker has registered yet (the model may still be loading)")
        dim = model.dim
        if dimensions is not None and isinstance(dim, int) and dimensions > dim:
            raise ApiError("BAD_REQUEST", f"'dimensions' is {dimensions}; this model has {dim}", param="dimensions")
        as_json = encoding == "float" and (dimensions is None or dimensions == dim)  # the rows as workers wrote them
        cache = header_allows(req.get_header(CACHE_HEADER))  # the OpenAI body has no room for it: a header
        options = JobOptions(truncate=truncate, prompt=prompt_of(model, body))
        result = (self.state.embed(req.uri_template, texts, True, options, as_json=as_json, model=model, cache=cache)
                  if texts else None)
        if result is not None and as_json:
            rows = result.rows_json()
        else:
            vectors = result.vectors if result is not None else np.zeros((0, dim or 0), np.float32)
            if dimensions is not None and dimensions < vectors.shape[1]:
                vectors = normalize_rows(vectors[:, :dimensions])
            rows = encode(vectors, encoding)
        data = [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(rows)]
        tokens = result.tokens if result is not None else 0
        resp.media = {"object": "list", "data": data, "model": model.model_id,
                      "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def encode(vectors: np.ndarray, encoding: str) -> list[Any]:
    if encoding == "base64":
        rows = np.ascontiguousarray(vectors, dtype="<f4")
        return [base64.b64encode(row.tobytes()).decode("ascii") for row in rows]
    return list(np.ascontiguousarray(vectors, dtype=np.float32))  # rows written from the buffer (json_media.py)


class Models:
    def __init__(self, state: AppState) -> None:
        self.state = state

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        models = served_models(self.state.client.broker_status())
        resp.media = {"object": "list", "data": [model_card(m.model_id) for m in models if m.model_id]}


class Model:
    def __init__(self, state: AppState) -> None:
        self.state = state

    def on_get(self, req: falcon.Request, resp: falcon.Response, model: str) -> None:
        status = self.state.client.broker_status()
        found = next((m for m in served_models(status) if model in m.names), None)
        if found is None or found.model_id is None:
            resolve(status, model)  # MODEL_NOT_FOUND or NO_WORKERS, with the message that says which
            raise ApiError("MODEL_NOT_FOUND", f"the model {model[:200]!r} is not served here", param="model")
        resp.media = model_card(found.model_id)
