"""CurveZMQ for workers on the LAN: the broker's encrypted ROUTER with a ZAP allow-list, and the worker's side.

The broker's LAN socket is a CurveZMQ server; a ZAP handler (pyzmq's ThreadAuthenticator, started before the
socket binds) lets a worker finish the handshake only when its public key is a ``*.key`` file in
``KEYS/allowed/``. The list is read again on every handshake, so ``embed-cluster keys add-worker`` takes effect
without a restart (a key removed from it is refused from the next connection on). A refused worker never
completes the handshake, so none of its messages reaches the broker and it can never be given a job.

Key files are pyzmq's certificate format (:mod:`broker.keys` writes them):

    KEYS/broker.key          the broker's public key: copy it to every worker machine
    KEYS/broker.key_secret   the broker's key pair: stays on the broker
    KEYS/allowed/NAME.key    public keys of the workers allowed in
    KEYS/NAME.key_secret     a worker's key pair: copy it to that worker's machine
"""

from __future__ import annotations

import ipaddress
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils.monitor import recv_monitor_message

log = logging.getLogger(__name__)

ZAP_DOMAIN = "embed-cluster"
BROKER_KEY = "broker.key"
BROKER_SECRET = "broker.key_secret"
ALLOWED_DIR = "allowed"
REFUSAL_LOG_INTERVAL = 60.0  # a refused key that keeps knocking is logged again after this long

# A worker's reconnects to a LAN broker back off up to this many milliseconds (libzmq doubles the interval).
RECONNECT_IVL_MS = 1000
RECONNECT_IVL_MAX_MS = 30_000


class KeyFileError(ValueError):
    """A key file or directory that is missing or not a key in pyzmq's certificate format."""


def load_keys(path: str | os.PathLike[str], need_secret: bool) -> tuple[bytes, bytes | None]:
    """(public, secret) z85 keys from a certificate file; a clear :class:`KeyFileError` when that fails."""
    path = Path(path)
    if not path.is_file():
        raise KeyFileError(f"key file {path} does not exist")
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"{path} is not a CurveZMQ key file: {exc}") from None
    if need_secret and not secret:
        raise KeyFileError(f"{path} holds no secret key: use a .key_secret file")
    return public, secret


def check_server_keys(keys_dir: str | os.PathLike[str]) -> None:
    """Raise :class:`KeyFileError` unless ``keys_dir`` holds the broker's key pair (``keys init`` makes it)."""
    load_keys(Path(keys_dir) / BROKER_SECRET, need_secret=True)


def check_client_keys(broker_key: str, key: str) -> None:
    """Raise :class:`KeyFileError` unless both of a worker's key files load."""
    load_keys(broker_key, need_secret=False)
    load_keys(key, need_secret=True)


def is_local_endpoint(address: str) -> bool:
    """Whether a ZeroMQ endpoint stays on this machine (ipc, inproc, or tcp to a loopback address)."""
    transport, _, rest = address.partition("://")
    if transport != "tcp":
        return True
    host = rest.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may be anywhere


class AllowList:
    """ZAP credentials provider: a key is allowed while ``DIR/allowed/`` holds it; refusals are logged."""

    def __init__(self, allowed_dir: Path) -> None:
        self.allowed_dir = allowed_dir
        self.peer = ""  # address of the connection being checked, set by the authenticator
        self.refused: dict[bytes, tuple[float, int]] = {}  # key -> (last logged, refusals since)

    def allowed_keys(self) -> dict[bytes, bool]:
        if not self.allowed_dir.is_dir():
            return {}
        return zmq.auth.load_certificates(self.allowed_dir)

    def callback(self, domain: str, key: bytes) -> bool:
        if key in self.allowed_keys():
            log.debug("allowed a LAN worker from %s with key %s", self.peer, key.decode())
            return True
        now = time.monotonic()
        last, count = self.refused.get(key, (-REFUSAL_LOG_INTERVAL, 0))
        count += 1
        if now - last >= REFUSAL_LOG_INTERVAL:
            log.warning("refused a LAN worker from %s: its public key %s is not on the allow-list in %s "
                        "(%d refusal(s); add it with: embed-cluster keys add-worker)",
                        self.peer or "?", key.decode(), self.allowed_dir, count)
            last, count = now, 0
        self.refused[key] = (last, count)
        return False


class LanAuthenticator(ThreadAuthenticator):
    """The ZAP handler thread; it tells the allow-list which address each handshake comes from."""

    def __init__(self, context: zmq.Context, allow_list: AllowList) -> None:
        super().__init__(context, log=logging.getLogger(__name__ + ".zap"))
        self.allow_list = allow_list

    async def handle_zap_message(self, msg: list[bytes]) -> None:
        # ZAP request: version, request id, domain, address, identity, mechanism, credentials
        self.allow_list.peer = msg[3].decode("utf-8", "replace") if len(msg) > 3 else ""
        await super().handle_zap_message(msg)


class LanSocket(zmq.Socket):
    """The broker's LAN ROUTER; closing it also stops its ZAP handler."""

    authenticator: LanAuthenticator | None = None

    def close(self, linger: int | None = None) -> None:
        super().close(linger)
        if self.authenticator is not None:
            self.authenticator.stop()
            self.authenticator = None


def lan_router(context: zmq.Context, address: str, keys_dir: str | None) -> zmq.Socket:
    """A CurveZMQ ROUTER bound to ``address`` that admits only workers whose key is allowed in ``keys_dir``."""
    if not keys_dir:
        raise KeyFileError("a LAN address needs a key directory (embed-cluster keys init DIR)")
    keys = Path(keys_dir)
    public, secret = load_keys(keys / BROKER_SECRET, need_secret=True)
    allow_list = AllowList(keys / ALLOWED_DIR)
    auth = LanAuthenticator(context, allow_list)
    auth.start()  # before the bind: with no ZAP handler libzmq would let every CURVE client in
    auth.configure_curve_callback(domain=ZAP_DOMAIN, credentials_provider=allow_list)
    sock = context.socket(zmq.ROUTER, socket_class=LanSocket)
    sock.authenticator = auth
    try:
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, 256 * 1024 * 1024)
        sock.curve_server = True
        sock.curve_publickey = public
        sock.curve_secretkey = secret
        sock.zap_domain = ZAP_DOMAIN.encode()
        sock.bind(address)
    except Exception:
        sock.close(linger=0)
        raise
    log.info("LAN workers: CurveZMQ on %s, %d worker key(s) allowed in %s", address,
             len(allow_list.allowed_keys()), allow_list.allowed_dir)
    return sock


def configure_curve_client(sock: zmq.Socket, broker_key_file: str, worker_secret_key_file: str | None) -> None:
    """Make ``sock`` (not yet connected) a CurveZMQ client of the broker whose public key is in the file;
    a thread logs a handshake the broker refuses, so the worker's log says why it is not joining."""
    if not worker_secret_key_file:
        raise KeyFileError("a CurveZMQ worker needs its own key file (--key NAME.key_secret)")
    server_public, _ = load_keys(broker_key_file, need_secret=False)
    public, secret = load_keys(worker_secret_key_file, need_secret=True)
    sock.curve_serverkey = server_public
    sock.curve_publickey = public
    sock.curve_secretkey = secret
    sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_IVL_MAX_MS)
    # MONITOR_STOPPED must be asked for: it is what ends the thread when the worker closes the socket
    monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                                      | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_SUCCEEDED
                                      | zmq.EVENT_MONITOR_STOPPED)
    threading.Thread(target=_watch_handshakes, args=(monitor, public.decode(), worker_secret_key_file),
                     name="curve-monitor", daemon=True).start()


def _watch_handshakes(monitor: zmq.Socket, public: str, key_file: str) -> None:
    """Log the outcome of each CurveZMQ handshake (once per change) until the socket closes."""
    last: int | None = None
    try:
        while True:
            try:
                event: dict[str, Any] = recv_monitor_message(monitor)
            except zmq.ZMQError:
                return  # the context is closing
            kind = event["event"]
            if kind == zmq.EVENT_MONITOR_STOPPED:
                return
            if kind == last:
                continue
            last = kind
            peer = event.get("endpoint", b"")
            peer = peer.decode() if isinstance(peer, bytes) else str(peer)
            if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                log.info("CurveZMQ handshake with %s succeeded", peer)
            elif kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                log.error("the broker at %s refused this worker's key %s (%s): it is not on the broker's "
                          "allow-list; on the broker run: embed-cluster keys add-worker DIR NAME, and copy "
                          "DIR/NAME.key_secret here. Retrying with backoff.", peer, public, key_file)
            else:
                log.error("CurveZMQ handshake with %s failed (is --broker-key that broker's broker.key?); "
                          "retrying with backoff", peer)
    finally:
        monitor.close(linger=0)
