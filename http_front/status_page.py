"""The live status page: ``GET /status`` (an HTML shell), ``GET /status/assets/{name}`` (its script and style
sheet) and ``GET /status.json`` (its data: the cluster now, from the broker's latest STATUS, and the front's
memory of the last ten minutes, http_front/status_history.py).

The HTML shell and its assets reveal nothing and are served without the API key (their rows in
http_front/routes.py); the page asks for the key once, keeps it in sessionStorage and sends it to
``/status.json`` like every client.
"""

from __future__ import annotations

import functools
from importlib import resources

import falcon

from http_front.state import AppState, model_facts, readiness

ASSETS = {"status.js": "text/javascript; charset=utf-8", "status.css": "text/css; charset=utf-8"}
# its own script, style and data only; never in a frame (another page could overlay the key form: clickjacking);
# its key form submits nowhere (were the script not to run, the key would not go into a URL, the history, a log)
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
       "frame-ancestors 'none'; form-action 'none'; base-uri 'none'")


@functools.cache
def _asset(name: str) -> bytes:
    """A file of the page, read from the package once."""
    return resources.files("http_front").joinpath("static", name).read_bytes()


class StatusPage:
    """``GET /status``: the HTML shell (no data in it: that comes from /status.json)."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.data = _asset("status.html")
        resp.content_type = "text/html; charset=utf-8"
        resp.set_header("Content-Security-Policy", CSP)
        resp.set_header("X-Frame-Options", "DENY")  # frame-ancestors for browsers that predate it
        resp.set_header("Referrer-Policy", "no-referrer")
        resp.set_header("Cache-Control", "no-cache")


class StatusAsset:
    """``GET /status/assets/{name}``: the page's script and style sheet, from the package."""

    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        if name not in ASSETS:
            raise falcon.HTTPNotFound()
        resp.data = _asset(name)
        resp.content_type = ASSETS[name]
        resp.set_header("Cache-Control", "no-cache")


class StatusData:
    """``GET /status.json``: the cluster now, its last ten minutes and its recent events."""

    def __init__(self, state: AppState) -> None:
        self.state = state

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        state = self.state
        status = state.client.broker_status()
        resp.media = {
            "status": readiness(state, status),
            **model_facts(state, status),
            "now": round(state.history.wall(), 3),
            "uptime_s": round(state.history.wall() - state.history.started_wall, 1),
            "queue_texts": status.queue_texts if status else None,
            "queue_jobs": status.queue_jobs if status else None,
            **state.history.snapshot(),
        }
        resp.set_header("Cache-Control", "no-store")
