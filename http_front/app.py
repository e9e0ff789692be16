"""The Falcon app: its middleware and its routes, one per row of the route table (http_front/routes.py).

``create_app(client, ...)`` is what tests call; http_front.main reads the environment and serves it.
"""

from __future__ import annotations

from typing import Any

import falcon
from falcon.routing import CompiledRouter

from embed_common.settings import Limits
from http_front import errors, json_media
from http_front.auth import ApiKeyAuth
from http_front.broker_client import BrokerClient
from http_front.embed_cache import CacheHitsHeader, FrontCache
from http_front.observability import RequestObservability
from http_front.pdf_text import PdfPool
from http_front.request_policy import Access, RequestPolicy
from http_front.routes import COUNTING, RouteLookup, add_routes
from http_front.state import AppState, ClientGoneCheck
from http_front.status_history import SAMPLE_INTERVAL, StatusRecorder


def new_state(client: BrokerClient, limits: Limits | None = None, pdf_parsers: PdfPool | None = None,
              cache: FrontCache | None = None, history_interval: float = SAMPLE_INTERVAL) -> AppState:
    """The state the app's resources share, counting requests by the route table; ``cache``: the vector cache
    every embedding route goes through (http_front/embed_cache.py), None for none; ``history_interval``: seconds
    between the status page's samples (http_front/status_history.py)."""
    return AppState(client, limits or Limits(), COUNTING, pdf_parsers, cache, history_interval)


def create_app(client: BrokerClient, limits: Limits | None = None, state: AppState | None = None,
               api_key: str | None = None, pdf_parsers: PdfPool | None = None,
               access: Access | None = None, history_interval: float | None = None) -> falcon.App:
    """The app; pass ``state`` (from :func:`new_state`) to keep a handle on it (the entry point drains it on
    shutdown), else ``limits`` and ``pdf_parsers`` make one. With ``api_key`` every request but those to the
    open routes needs it (http_front/auth.py). ``pdf_parsers``: the processes that read PDFs
    (http_front/pdf_text.py); by default a pool of the state's own, started on the first PDF. ``access``: the Host
    names and web origins let in (http_front/request_policy.py); by default any Host, and no other origin.
    ``history_interval``: seconds between the status page's samples (by default ``SAMPLE_INTERVAL``)."""
    if state is not None and (limits is not None or pdf_parsers is not None or history_interval is not None):
        raise TypeError("pass either state, or limits, pdf_parsers and history_interval to make one")
    state = state or new_state(client, limits, pdf_parsers,
                               history_interval=SAMPLE_INTERVAL if history_interval is None else history_interval)
    router = CompiledRouter()
    middleware: list[Any] = [RouteLookup(router), json_media.StreamLargeBodies(),
                             RequestObservability(state.metrics), StatusRecorder(state.history), ClientGoneCheck(),
                             CacheHitsHeader(), RequestPolicy(access or Access())]
    if api_key:
        middleware.append(ApiKeyAuth(api_key))
    app = falcon.App(cors_enable=False, middleware=middleware, router=router)
    app.req_options.strip_url_path_trailing_slash = True
    json_media.install(app)
    errors.install(app)
    add_routes(app, state)
    return app
