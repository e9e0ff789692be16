"""Rerank routes: ``POST /rerank`` in text-embeddings-inference's shape, ``POST /v1/rerank`` (and ``/v2/rerank``)
in the shape Cohere and Jina use, which RAG tools call.

Both score each document against the query with a reranker (a cross-encoder: worker/cross_encoder.py) and
answer the documents' indices sorted by score, best first. The documents travel as jobs, as texts do to an
embedding model: split over the reranker's workers and batched with other requests' (http_front/broker_client.py);
each job carries the query. A score is what ``CrossEncoder.predict`` gives (its activation applied) unless the
request asks for raw scores (TEI's ``raw_scores``).
"""

from __future__ import annotations

import uuid
from typing import Any

import falcon
import numpy as np

from embed_common.protocol import JobOptions
from http_front.errors import ApiError
from http_front.parsing import check_texts, flag, read_json
from http_front.served_models import RERANK, Served, model_param, resolve
from http_front.state import AppState

TEI_FIELDS = {"query", "texts", "raw_scores", "return_text", "truncate", "truncation_direction", "model"}
COHERE_FIELDS = {"model", "query", "documents", "top_n", "return_documents", "rank_fields", "max_chunks_per_doc",
                 "max_tokens_per_doc", "priority"}


def read_object(req: falcon.Request, state: AppState, fields: set[str]) -> dict[str, Any]:
    body = read_json(req, state.limits)
    if not isinstance(body, dict):
        raise ApiError("BAD_REQUEST", "the body must be a JSON object")
    unknown = sorted(set(body) - fields)
    if unknown:
        raise ApiError("BAD_REQUEST", f"unknown field(s): {', '.join(unknown)}", param=unknown[0])
    return body


def query_of(body: dict[str, Any], state: AppState) -> str:
    query = body.get("query")
    if not isinstance(query, str):
        raise ApiError("BAD_REQUEST", "'query' is required, a string", param="query")
    return check_texts([query], state.limits, field_name="query")[0]


def scores(state: AppState, route: str, model: Served, query: str, documents: list[str], raw: bool,
           truncate: bool) -> tuple[np.ndarray, int]:
    """Each document's score against ``query`` (input order) and the tokens the pairs held."""
    if not documents:
        return np.zeros(0, np.float32), 0
    result = state.embed(route, documents, False, JobOptions(truncate=truncate, query=query, raw_scores=raw),
                         model=model)
    return result.vectors.reshape(-1).astype(np.float32), result.tokens


def ranked(values: np.ndarray) -> list[int]:
    """Indices by score, best first (a stable sort: equal scores keep their input order)."""
    return [int(i) for i in np.argsort(-values, kind="stable")]


class Rerank:
    """``POST /rerank`` (TEI): ``{query, texts, raw_scores, return_text, truncate}`` ->
    ``[{index, score, [text]}]``, best first."""

    def __init__(self, state: AppState) -> None:
        self.state = state

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = read_object(req, self.state, TEI_FIELDS)
        query = query_of(body, self.state)
        if "texts" not in body:
            raise ApiError("BAD_REQUEST", "'texts' is required")
        texts = check_texts(body["texts"], self.state.limits)
        raw, return_text = flag(body, "raw_scores", False), flag(body, "return_text", False)
        truncate = flag(body, "truncate", True)
        if body.get("truncation_direction", "right") not in ("right", "Right"):
            raise ApiError("BAD_REQUEST", "'truncation_direction': only 'right' (the document's end is cut)")
        model = resolve(self.state.client.broker_status(), model_param(body), RERANK)
        values, _ = scores(self.state, req.uri_template, model, query, texts, raw, truncate)
        resp.media = [{"index": i, "score": float(values[i]), **({"text": texts[i]} if return_text else {})}
                      for i in ranked(values)]


def documents_of(body: dict[str, Any], state: AppState) -> list[str]:
    """Cohere's ``documents``: strings, or objects whose ``text`` (or first ``rank_fields`` field) is scored."""
    documents = body.get("documents")
    if not isinstance(documents, list):
        raise ApiError("BAD_REQUEST", "'documents' is required, a list of strings", param="documents")
    rank_fields = body.get("rank_fields")
    field_name = "text"
    if rank_fields is not None:
        if not (isinstance(rank_fields, list) and rank_fields and all(isinstance(f, str) for f in rank_fields)):
            raise ApiError("BAD_REQUEST", "'rank_fields' must be a list of field names", param="rank_fields")
        field_name = rank_fields[0]
    texts = [d.get(field_name) if isinstance(d, dict) else d for d in documents]
    return check_texts(texts, state.limits, field_name="documents")


def whole_number(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise ApiError("BAD_REQUEST", f"'{name}' must be a positive integer", param=name)
    return value


class CohereRerank:
    """``POST /v1/rerank`` and ``/v2/rerank`` (Cohere's, Jina's): ``{model, query, documents, top_n,
    return_documents}`` -> ``{results: [{index, relevance_score, [document]}], usage, meta}``, best first."""

    def __init__(self, state: AppState) -> None:
        self.state = state

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = read_object(req, self.state, COHERE_FIELDS)
        query = query_of(body, self.state)
        documents = documents_of(body, self.state)
        top_n = whole_number(body, "top_n")
        for name in ("max_chunks_per_doc", "max_tokens_per_doc"):  # accepted, checked; the model's limit cuts
            whole_number(body, name)
        return_documents = flag(body, "return_documents", False)
        model = resolve(self.state.client.broker_status(), model_param(body), RERANK)
        values, tokens = scores(self.state, req.uri_template, model, query, documents, False, True)
        order = ranked(values)[:top_n]
        results = [{"index": i, "relevance_score": float(values[i]),
                    **({"document": {"text": documents[i]}} if return_documents else {})} for i in order]
        resp.media = {"id": str(uuid.uuid4()), "model": model.model_id, "results": results,
                      "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
                      "meta": {"api_version": {"version": "1"}, "billed_units": {"search_units": 1}}}
