"""THE route table: every route of the front, one row each. The app (http_front/app.py), the API key check
(http_front/auth.py), the server's probe threads (http_front/server.py ``PROBE_PATHS``), the status page's
counting (``COUNTING``) and the OpenAPI document (http_front/openapi.py) all read it; nothing else names a route.

The columns of a :class:`Route`:

- ``path``: the URI template, as falcon routes it (``{name}`` a path segment, ``{name:path}`` the rest);
- ``methods``: the HTTP methods it answers (its resource has an ``on_<method>`` each; falcon answers 405 to the
  others);
- ``resource``: what answers it, built once per app from the :class:`~http_front.state.AppState`: a resource
  class that takes the state, or a small function that builds one from it;
- ``auth``: ``"key"``, it needs ``Authorization: Bearer <key>`` when the server has a key; ``"open"``, never
  (the probes, this spec, the status page's empty shell: they say nothing about the data);
- ``threads``: ``"probe"``, answered from cached state on the server's own probe threads, never behind embed
  requests (GET and HEAD only); ``"work"``, on the request threads, refused with OVERLOADED when they are full;
- ``counted``: in the status page's charts: ``"latency"``, in the request rates and the latency percentiles
  (the routes that embed); ``"rates"``, in the request rates only; ``"no"``, not at all (the page watching
  itself);
- ``accepts``: the media type of the request body it takes: ``"json"`` (application/json), ``"pdf"``
  (application/pdf), ``"none"`` (no body). The OpenAPI request body comes from it; it is also the column a
  request policy reads (refusing other Content-Types with 415, see "The request policy's hook" below);
- ``doc``: its OpenAPI operation (:class:`~http_front.openapi.Doc`: summary, answers, errors, parameters).

Adding a route: write its resource (a class with ``on_get``/``on_post``, taking the AppState), and add one
row here; the app serves it, the spec documents it, auth, the server and the status page treat it by its row.
For example ``/tokenize``:

    Route("/tokenize", ("POST",), Tokenize, auth="key", threads="work", counted="rates", accepts="json",
          doc=Doc("token counts of texts", {200: json_answer("TokenizeResponse", "one count per text")},
                  errors=EMBED_ERRORS, request="TokenizeRequest")),

with its two schemas in openapi.py's ``schemas``.

The request policy's hook: :class:`RouteLookup`, the app's first middleware, puts the request's row in
``req.context.route`` before routing (None when no route matches), so that every middleware after it (the API
key check, the status recorder, a host/origin/media-type policy) decides by the row, even for a request it
refuses before falcon routes it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import falcon
from falcon.routing import CompiledRouter

from http_front.documents import EmbedChunks, EmbedPdf
from http_front.observability import MetricsResource
from http_front.openai_api import Embeddings, Model, Models
from http_front.openapi import CHUNK_OPTIONS, EMBED_ERRORS, Doc, OpenApiSpec, json_answer, openapi_path, text_answer
from http_front.rerank_api import CohereRerank, Rerank
from http_front.seed_api import Embed, Health, Info, Livez, Readyz
from http_front.state import AppState
from http_front.status_history import Counting
from http_front.status_page import ASSETS, StatusAsset, StatusData, StatusPage
from http_front.tokenize_api import Tokenize

Auth = Literal["key", "open"]
Threads = Literal["probe", "work"]
Counted = Literal["latency", "rates", "no"]
Accepts = Literal["json", "pdf", "none"]
STATUS_PATH = "/status"  # the status page, which the front announces when it listens (http_front/main.py)


@dataclass(frozen=True)
class Route:
    path: str
    methods: tuple[str, ...]
    resource: Callable[[AppState], object]
    auth: Auth
    threads: Threads
    counted: Counted
    accepts: Accepts
    doc: Doc


def _path_parameter(name: str, schema: dict[str, object] | None = None) -> dict[str, object]:
    return {"name": name, "in": "path", "required": True, "schema": schema or {"type": "string"}}


_PDF_QUERY = tuple({"name": name, "in": "query", "required": False, "schema": schema}
                   for name, schema in (*CHUNK_OPTIONS.items(), ("normalize", {"type": "boolean"})))

TABLE: tuple[Route, ...] = (
    # the seed's routes (http_front/seed_api.py)
    Route("/health", ("GET",), Health, auth="key", threads="probe", counted="rates", accepts="none",
          doc=Doc("the seed's health check: 200 once a worker can serve",
                  {200: json_answer("Health", "a worker can serve"),
                   503: json_answer("Health", "not (yet) able to serve")})),
    Route("/info", ("GET",), Info, auth="key", threads="work", counted="rates", accepts="none",
          doc=Doc("model, limits and workers", {200: json_answer("Info", "the cluster")})),
    Route("/embed", ("POST",), Embed, auth="key", threads="work", counted="latency", accepts="json",
          doc=Doc("the seed's embedding call", {200: json_answer("EmbedResponse", "one vector per text, in order")},
                  errors=(*EMBED_ERRORS, 404), request="EmbedRequest")),
    # OpenAI's (http_front/openai_api.py)
    Route("/v1/embeddings", ("POST",), Embeddings, auth="key", threads="work", counted="latency", accepts="json",
          doc=Doc("OpenAI-compatible embeddings", {200: json_answer("EmbeddingsResponse", "the embeddings")},
                  errors=(*EMBED_ERRORS, 404), request="EmbeddingsRequest")),
    Route("/v1/models", ("GET",), Models, auth="key", threads="work", counted="rates", accepts="none",
          doc=Doc("the served model, OpenAI-style", {200: json_answer("ModelList", "the models")})),
    Route("/v1/models/{model:path}", ("GET",), Model, auth="key", threads="work", counted="rates",  # ids hold a /
          accepts="none", doc=Doc("one model, OpenAI-style", {200: json_answer("Model", "the model")},
                                  errors=(404, 503), parameters=(_path_parameter("model"),))),
    # rerankers (http_front/rerank_api.py): TEI's shape, and Cohere's (which Jina's and many RAG tools share)
    Route("/rerank", ("POST",), Rerank, auth="key", threads="work", counted="latency", accepts="json",
          doc=Doc("scores of texts against a query by a reranker (TEI's shape)",
                  {200: json_answer("RerankResponse", "the texts' indices and scores, best first")},
                  errors=(*EMBED_ERRORS, 404), request="RerankRequest")),
    Route("/v1/rerank", ("POST",), CohereRerank, auth="key", threads="work", counted="latency", accepts="json",
          doc=Doc("Cohere/Jina-compatible rerank",
                  {200: json_answer("CohereRerankResponse", "the documents' indices and scores, best first")},
                  errors=(*EMBED_ERRORS, 404), request="CohereRerankRequest")),
    Route("/v2/rerank", ("POST",), CohereRerank, auth="key", threads="work", counted="latency", accepts="json",
          doc=Doc("Cohere/Jina-compatible rerank (the path of Cohere's v2 client)",
                  {200: json_answer("CohereRerankResponse", "the documents' indices and scores, best first")},
                  errors=(*EMBED_ERRORS, 404), request="CohereRerankRequest")),
    Route("/tokenize", ("POST",), Tokenize, auth="key", threads="work", counted="rates", accepts="json",
          doc=Doc("each text's token count (and ids) for a model, and its window",
                  {200: json_answer("TokenizeResponse", "one count per text, in order")},
                  errors=(*EMBED_ERRORS, 404), request="TokenizeRequest")),
    # operations (http_front/observability.py, and these routes themselves)
    Route("/metrics", ("GET",), lambda state: MetricsResource(state.metrics), auth="key", threads="probe",
          counted="rates", accepts="none",
          doc=Doc("Prometheus metrics", {200: text_answer("text/plain", "the text exposition format")})),
    Route("/livez", ("GET",), lambda state: Livez(), auth="open", threads="probe", counted="rates",
          accepts="none", doc=Doc("the front's process is up", {200: json_answer("Probe", "alive")})),
    Route("/readyz", ("GET",), Readyz, auth="open", threads="probe", counted="rates", accepts="none",
          doc=Doc("a worker can serve", {200: json_answer("Probe", "ready"), 503: json_answer("Probe", "not ready")})),
    Route("/openapi.json", ("GET",), lambda state: OpenApiSpec(state, TABLE), auth="open", threads="work",
          counted="rates", accepts="none",
          doc=Doc("this document", {200: json_answer({"type": "object"}, "the OpenAPI document")})),
    # documents (http_front/documents.py)
    Route("/embed/pdf", ("POST",), EmbedPdf, auth="key", threads="work", counted="latency", accepts="pdf",
          doc=Doc("a PDF's text, page by page, in chunks of at most chunk_tokens tokens, and their vectors",
                  {200: json_answer("PdfResponse", "the chunks of every page, in order")},
                  errors=(*EMBED_ERRORS, 415), parameters=_PDF_QUERY)),
    Route("/embed/chunks", ("POST",), EmbedChunks, auth="key", threads="work", counted="latency", accepts="json",
          doc=Doc("texts in chunks of at most chunk_tokens tokens, and their vectors",
                  {200: json_answer("ChunksResponse", "the chunks of every text, in order")},
                  errors=(*EMBED_ERRORS, 404), request="ChunksRequest")),
    # the status page (http_front/status_page.py): its shell and assets are open, its data needs the key
    Route(STATUS_PATH, ("GET",), lambda state: StatusPage(), auth="open", threads="work", counted="no",
          accepts="none", doc=Doc("the live status page (an HTML shell; its data comes from /status.json)",
                                  {200: text_answer("text/html", "the page")})),
    Route("/status/assets/{name}", ("GET",), lambda state: StatusAsset(), auth="open", threads="work",
          counted="no", accepts="none",
          doc=Doc("the status page's script and style sheet",
                  {200: {"description": "the file", "content": {kind.split(";")[0]: {"schema": {"type": "string"}}
                                                                for kind in sorted(set(ASSETS.values()))}},
                   404: json_answer("Error", "NOT_FOUND: no such file")},
                  parameters=(_path_parameter("name", {"type": "string", "enum": sorted(ASSETS)}),))),
    Route("/status.json", ("GET",), StatusData, auth="key", threads="probe", counted="no", accepts="none",
          doc=Doc("the status page's data: the cluster now, its last 10 minutes, events",
                  {200: json_answer("StatusData", "the status")})),
)

ROUTES: dict[str, Route] = {route.path: route for route in TABLE}
PROBE_PATHS = frozenset(route.path for route in TABLE if route.threads == "probe")
COUNTING = Counting(latency=frozenset(route.path for route in TABLE if route.counted == "latency"),
                    uncounted=frozenset(route.path for route in TABLE if route.counted == "no"))


def add_routes(app: falcon.App, state: AppState) -> None:
    for route in TABLE:
        app.add_route(route.path, route.resource(state))


# a templated route's fixed part ("/status/assets/"): a path under it that no route matches is still that
# route's (its 404 is as open, and as uncounted, as the route itself); the longest first
_PREFIXES = sorted(((route.path.split("{", 1)[0], route) for route in TABLE if "{" in route.path),
                   key=lambda pair: -len(pair[0]))


def find(router: CompiledRouter, path: str) -> Route | None:
    """The row of a request for ``path``: the route ``router`` (the app's) routes it to; else the templated
    route whose fixed part it starts with; else None."""
    found = router.find(path)
    if found is not None and found[3] is not None:
        return ROUTES[found[3]]
    return next((route for prefix, route in _PREFIXES if path.startswith(prefix)), None)


class RouteLookup:
    """Falcon middleware, first of the app's: ``req.context.route``, the request's row (:func:`find`), before
    routing. ``router`` is the app's own (``falcon.App(router=...)``), so the row is the one falcon then routes
    to."""

    def __init__(self, router: CompiledRouter) -> None:
        self.router = router

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.route = find(self.router, req.path)


def markdown_table() -> str:
    """The README's route table, from this one (``python -m http_front.routes`` prints it)."""
    lines = ["| Route | Body | API key (when the server has one) | What |", "|---|---|---|---|"]
    for route in TABLE:
        body = {"json": "JSON", "pdf": "PDF", "none": ""}[route.accepts]
        key = "needed" if route.auth == "key" else "open"
        lines += [f"| `{method} {openapi_path(route.path)}` | {body} | {key} | {route.doc.summary} |"
                  for method in route.methods]
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_table())
