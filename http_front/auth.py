"""API keys for the front: required when it listens beyond loopback.

- a key comes from ``EMBED_API_KEY`` only (never a flag: argv is visible to every user of the machine); ``up``
  hands it to its front child through the environment;
- when a key is set, every request needs ``Authorization: Bearer <key>``, except on the routes whose row in
  the route table says ``auth="open"`` (http_front/routes.py: the probes, the spec and the status page's empty
  shell, which say nothing about the data); a missing or wrong key is 401 UNAUTHORIZED;
- :func:`bind_refusal` is the start-up rule: a non-loopback bind without a key is refused unless ``--insecure``.
"""

from __future__ import annotations

import hmac
import ipaddress

import falcon

from http_front.errors import ApiError

API_KEY_ENV = "EMBED_API_KEY"


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost: it may resolve to anything


def bind_refusal(host: str, api_key: str | None, insecure: bool) -> str | None:
    """Why the front must not start on ``host``, or None when it may."""
    if is_loopback(host) or api_key or insecure:
        return None
    return (f"refusing to listen on {host} without an API key: set {API_KEY_ENV} (clients then send "
            "'Authorization: Bearer <key>'), bind 127.0.0.1, or pass --insecure to serve anyone who can reach it")


class ApiKeyAuth:
    """Falcon middleware: 401 for every request without the key, before routing (unknown paths included),
    but those to an open route: ``req.context.route``, the request's row, set by http_front/routes.py
    ``RouteLookup`` before this runs."""

    def __init__(self, api_key: str) -> None:
        self._key = api_key.encode()

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        route = req.context.get("route")
        if route is not None and route.auth == "open":
            return
        scheme, _, token = (req.get_header("Authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self._key):
            raise ApiError("UNAUTHORIZED", "a valid API key is required: send 'Authorization: Bearer <key>'")
