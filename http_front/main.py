"""Entry point of the HTTP front: the Falcon app served by waitress, linked to the broker."""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass, field

from embed_common import lifeline, progress
from embed_common.exits import ExitCode
from embed_common.settings import Limits, default
from http_front.app import create_app, new_state
from http_front.broker_client import BrokerClient
from http_front.embed_cache import open_cache
from http_front.request_policy import Access
from http_front.routes import STATUS_PATH
from http_front.server import make_server, serve

log = logging.getLogger(__name__)

ABORT_GRACE = 5.0  # seconds for requests failed at the end of the grace to send their 503


@dataclass(frozen=True)
class FrontSettings:
    broker: str
    host: str = default("host", "front")
    port: int = default("port", "front")
    threads: int = default("http-threads", "front")
    limits: Limits = field(default_factory=Limits)
    shutdown_grace: float = default("shutdown-grace", "front")
    parent_pid: int = 0
    api_key: str | None = field(default=None, repr=False)  # from EMBED_API_KEY; never logged
    cache: str = default("cache", "front")  # on, off or a path (http_front/embed_cache.py open_cache)
    cache_max_bytes: int = default("cache-max-bytes", "front")
    allowed_hosts: tuple[str, ...] | None = None  # more Host names (http_front/request_policy.py)
    allowed_origins: tuple[str, ...] | None = None  # web origins let in, with CORS


def run(settings: FrontSettings) -> int:
    lifeline.watch_parent(settings.parent_pid)
    client = BrokerClient(settings.broker, on_first_worker=lambda: progress.emit("front_ready", {}))
    state = new_state(client, settings.limits, cache=open_cache(settings.cache, settings.cache_max_bytes))
    access = Access.of(settings.host, settings.allowed_hosts, settings.allowed_origins)
    app = create_app(client, state=state, api_key=settings.api_key, access=access)
    limits = settings.limits
    try:
        server = make_server(app, settings.host, settings.port, settings.threads, limits.max_body_bytes,
                             limits.max_connections, limits.idle_timeout, limits.http_queue)
    except OSError as exc:  # the shared start-up contract: one event, one line, exit 1 (docs/reliability.md)
        reason = f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}"
        progress.emit("startup_failed", {"code": "PORT_IN_USE", "reason": reason, "part": "front"})
        # one line on stderr for the cluster: under a supervisor, it logs the event as an error
        (log.info if settings.parent_pid else log.error)("%s", reason)
        return ExitCode.FAILED  # the port cannot be bound: the supervisor ends start-up, no restart
    client.start()
    state.history.start()
    port = server.socket.getsockname()[1]  # type: ignore[union-attr]
    stopping = threading.Event()
    closing = threading.Event()  # set once no request is in the app: serve() then closes gracefully

    def stop(signum: int, frame: object) -> None:
        if stopping.is_set():
            return
        stopping.set()
        lifeline.ignore_further_signals()
        # drain on a thread: the signal handler must return for waitress's loop to keep serving
        threading.Thread(target=shutdown, name="drain", daemon=True).start()

    def shutdown() -> None:
        deadline = time.monotonic() + settings.shutdown_grace
        while True:  # in slices: once the supervisor is gone (killed), so are the broker and workers: stop waiting
            finished = state.drain(min(0.25, max(0.0, deadline - time.monotonic())))
            orphaned = lifeline.orphaned(settings.parent_pid)
            if finished or orphaned or time.monotonic() >= deadline:
                break
        if finished:
            log.info("front drained: all requests finished; closing")
        else:  # answer what is still waiting (503 SHUTTING_DOWN) rather than cut its connection
            aborted = client.abort("SHUTTING_DOWN", "the service is shutting down")
            finished = state.drain(ABORT_GRACE)
            log.warning("front drained: %s, %d jobs answered SHUTTING_DOWN%s; closing",
                        "the supervisor is gone" if orphaned else "the grace expired", aborted,
                        "" if finished else ", some requests still busy")
        closing.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    url = f"http://[{settings.host}]:{port}" if ":" in settings.host else f"http://{settings.host}:{port}"  # IPv6
    progress.emit("front_listening", {"host": settings.host, "port": port, "url": url,
                                      "status_url": url + STATUS_PATH})
    log.info("front listening on %s (status page %s%s), broker at %s, %s", url, url, STATUS_PATH, settings.broker,
             "API key required" if settings.api_key else "no API key")
    try:
        serve(server, closing)
    except OSError:  # waitress raises when its socket is closed under it during shutdown
        if not stopping.is_set():
            raise
    finally:
        state.close()
        client.close()
    return ExitCode.OK
