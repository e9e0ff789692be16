"""The seed's routes, ``GET /health``, ``GET /info`` and ``POST /embed``, and the probes ``GET /livez`` and
``GET /readyz`` (the compatibility contract: /work/shared/seed/python-sidecar-embedding-service.md)."""

from __future__ import annotations

import falcon

from embed_common.protocol import JobOptions
from http_front import json_media
from http_front.embed_cache import CACHE_HEADER, header_allows
from http_front.parsing import flag, read_texts_request
from http_front.served_models import EMBED, PROMPT_FIELDS, model_param, prompt_of, resolve
from http_front.state import AppState, cluster_summary, model_facts, readiness


class Health:
    def __init__(self, state: AppState) -> None:
        self.state = state

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        status = self.state.client.broker_status()
        state = readiness(self.state, status)
        resp.status = falcon.HTTP_200 if state == "ok" else falcon.HTTP_503
        resp.media = {"status": state, **cluster_summary(status)}


class Livez:
    """The front's process is up and serving HTTP; nothing else is checked."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"status": "alive"}


class Readyz:
    """200 when a worker can serve (what /health says, without the details)."""

    def __init__(self, state: AppState) -> None:
        self.state = state

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        state = readiness(self.state, self.state.client.broker_status())
        resp.status = falcon.HTTP_200 if state == "ok" else falcon.HTTP_503
        resp.media = {"status": state}


class Info:
    def __init__(self, state: AppState) -> None:
        self.state = state

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        summary = cluster_summary(self.state.client.broker_status())
        resp.media = {**model_facts(self.state, self.state.client.broker_status()), "device": summary["device"],
                      "workers": summary["workers"]}


EMBED_FIELDS = {"texts", "normalize", "truncate", "model", "cache", *PROMPT_FIELDS}


class Embed:
    def __init__(self, state: AppState) -> None:
        self.state = state

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        limits = self.state.limits
        body, texts = read_texts_request(req, limits, EMBED_FIELDS)
        normalize = flag(body, "normalize", True)
        truncate = flag(body, "truncate", True)
        model = resolve(self.state.client.broker_status(), model_param(body), EMBED)
        prompt = prompt_of(model, body)
        if not texts:
            resp.media = {"vectors": []}
            return
        cache = flag(body, "cache", header_allows(req.get_header(CACHE_HEADER)))
        options = JobOptions(truncate=truncate, prompt=prompt)
        result = self.state.embed(req.uri_template, texts, normalize, options, as_json=True, model=model, cache=cache)
        extra = {"truncated": result.truncated} if result.truncated else {}  # only when any, as the seed's
        json_media.answer(resp, extra, "vectors", result.vectors_json())  # the rows as the workers wrote them
