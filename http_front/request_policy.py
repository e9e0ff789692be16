"""Who may drive the front from a browser: the Host, Origin and media-type checks, and CORS (docs/security.md).

A web page the user visits runs on the user's machine, next to a cluster on 127.0.0.1. Three rules keep it out,
each answered from the error table before a body is read (so before any work), and counted like any answer:

- **Host** (:func:`allowed_hosts`): on a loopback bind only ``localhost``, ``127.0.0.1`` and ``[::1]`` (any port),
  and the names of ``--allowed-hosts``, are answered; anything else is 403 HOST_NOT_ALLOWED. A DNS-rebinding
  page (its own name re-pointed at 127.0.0.1, so same-origin with us) sends its own name. On another bind the
  API key guards, and ``--allowed-hosts`` is checked where it is given.
- **Origin**: a request whose ``Origin`` is not the front's own (the status page) nor in ``--allowed-origins``
  is 403 ORIGIN_NOT_ALLOWED. Programs (the Python and TypeScript clients, the OpenAI SDKs, a Node worker
  thread) send no Origin and are not affected. An allowed origin gets CORS: a preflight is answered with the
  route's methods, the headers a client sends and a max-age; every answer, errors too, names the origin.
- **Media type**: a route that takes a body takes one type (the route's ``body``): the JSON routes refuse
  anything but ``application/json`` (or ``+json``), ``/embed/pdf`` anything but ``application/pdf``, with 415
  UNSUPPORTED_MEDIA_TYPE. The bodies a page may send without a preflight (text/plain, forms) are refused.

:class:`RequestPolicy` is the Falcon middleware. It decides by the request's row of the route table
(``req.context.route``, put there before routing by http_front/routes.py ``RouteLookup``: its ``methods`` and
``accepts``). Host and Origin are decided in ``process_request``, before the API key (a preflight carries none)
and the routing; the media type in ``process_resource``, after the key and before the responder reads the body.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import falcon

from http_front.auth import is_loopback
from http_front.errors import ApiError
from http_front.observability import REQUEST_ID_HEADER
from http_front.parsing import MEDIA_TYPES

JSON = MEDIA_TYPES["json"]
PDF = MEDIA_TYPES["pdf"]
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]"})
ANY = "*"
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
# what a cross-origin caller may send, and read back, beyond the CORS-safelisted headers
CORS_REQUEST_HEADERS = ("Authorization", "Content-Type", REQUEST_ID_HEADER)
CORS_EXPOSED_HEADERS = (REQUEST_ID_HEADER, "Retry-After")
CORS_MAX_AGE = 600  # seconds a browser may keep a preflight's answer


def allowed_hosts(bind_host: str, extra: Iterable[str] | None) -> frozenset[str] | None:
    """The Host names the front answers to, or None when any will do (a non-loopback bind without
    ``--allowed-hosts``, or ``*`` in it). The loopback names are always among them: the machine's own
    probes and clients (docker's health check) ask for 127.0.0.1."""
    names = frozenset(name.lower() for name in extra or ())
    if ANY in names or (not names and not is_loopback(bind_host)):
        return None
    return LOOPBACK_HOSTS | names


def host_name(header: str) -> str:
    """The name of a Host header, without its port: ``[::1]:8421`` -> ``[::1]``, ``localhost:8421`` ->
    ``localhost`` (a bare IPv6 address without brackets is not a valid Host and stays as it is)."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[:header.find("]") + 1] if "]" in header else header
    name, colon, port = header.rpartition(":")
    return name if colon and port.isdigit() and ":" not in name else header


def media_type(content_type: str | None) -> str:
    """``application/json; charset=utf-8`` -> ``application/json``; '' when there is none."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def takes(body: str, given: str) -> bool:
    """Whether a route that takes ``body`` takes a body of media type ``given``."""
    if body == JSON:
        return given == JSON or (given.startswith("application/") and given.endswith("+json"))
    return given == body


@dataclass(frozen=True)
class Access:
    """Who may call: ``hosts`` the Host names answered (None: any; :func:`allowed_hosts` makes it from the
    bind and ``--allowed-hosts``), ``origins`` the web origins let in beside the front's own (``*``: any)."""

    hosts: frozenset[str] | None = None
    origins: frozenset[str] = frozenset()

    @classmethod
    def of(cls, bind_host: str, hosts: Iterable[str] | None, origins: Iterable[str] | None) -> Access:
        return cls(allowed_hosts(bind_host, hosts), frozenset(o.lower() for o in origins or ()))


class RequestPolicy:
    """Falcon middleware: the Host, Origin and media-type checks and CORS (see the module's docstring); after
    http_front/routes.py ``RouteLookup``, before the API key check."""

    def __init__(self, access: Access) -> None:
        self.hosts = access.hosts
        self.origins = access.origins

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        route = req.context.get("route")  # its row of the route table, or None
        if route is not None:
            req.uri_template = route.path  # a refusal is counted under its route (falcon routes it after us)
        host = req.get_header("Host")
        if self.hosts is not None and host is not None and host_name(host) not in self.hosts:
            raise ApiError("HOST_NOT_ALLOWED", f"this server does not answer to the host {host_name(host)!r}; "
                           "start it with --allowed-hosts naming it if that is its name")
        origin = req.get_header("Origin")
        if origin is not None:
            if not self.origin_allowed(origin, host):
                raise ApiError("ORIGIN_NOT_ALLOWED", f"web pages from {origin!r} may not call this server; "
                               "start it with --allowed-origins naming that origin to let them")
            req.context.cors_origin = origin
            if req.method == "OPTIONS" and req.get_header("Access-Control-Request-Method") and route is not None:
                self.preflight(req, resp, route.methods)
                return

    def process_resource(self, req: falcon.Request, resp: falcon.Response, resource: object,
                         params: dict[str, Any]) -> None:
        """The media type, once the request is routed (and past the API key), before its responder reads it."""
        route = req.context.get("route")
        body = MEDIA_TYPES.get(route.accepts) if route is not None else None
        if body is not None and req.method in BODY_METHODS:
            given = media_type(req.content_type)
            if not takes(body, given):
                raise ApiError("UNSUPPORTED_MEDIA_TYPE", f"{route.path} takes its body as {body}: send "
                               f"Content-Type: {body} (got {given or 'none'!r})")

    def origin_allowed(self, origin: str, host: str | None) -> bool:
        origin = origin.strip().lower()
        if origin in self.origins or ANY in self.origins:
            return True
        _, sep, netloc = origin.partition("://")  # the front's own pages (the status page): their origin is us
        return bool(sep) and host is not None and netloc == host.strip().lower()

    @staticmethod
    def preflight(req: falcon.Request, resp: falcon.Response, methods: Any) -> None:
        """Answer a CORS preflight of an allowed origin with the route's ``methods``, without the API key
        (browsers send none with it)."""
        resp.status = falcon.HTTP_204
        resp.set_header("Access-Control-Allow-Methods", ", ".join(methods))
        resp.set_header("Access-Control-Allow-Headers", ", ".join(CORS_REQUEST_HEADERS))
        resp.set_header("Access-Control-Max-Age", str(CORS_MAX_AGE))
        if (req.get_header("Access-Control-Request-Private-Network") or "").lower() == "true":
            resp.set_header("Access-Control-Allow-Private-Network", "true")  # Chrome's Private Network Access
        resp.append_header("Vary", "Access-Control-Request-Method, Access-Control-Request-Headers")
        resp.complete = True  # nothing else runs for it: no API key, no routing, no responder

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource: object,
                         req_succeeded: bool) -> None:
        resp.set_header("X-Content-Type-Options", "nosniff")  # a JSON answer is never read as HTML or script
        if req.get_header("Origin") is not None:
            resp.append_header("Vary", "Origin")
        origin = req.context.get("cors_origin")
        if origin is not None:  # an allowed origin: it may read this answer, errors included
            resp.set_header("Access-Control-Allow-Origin", origin)
            resp.set_header("Access-Control-Expose-Headers", ", ".join(CORS_EXPOSED_HEADERS))
