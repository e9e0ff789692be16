"""CurveZMQ key files and the worker's (client's) half of the LAN link; the broker's half is broker/security.py.

Key files are pyzmq's certificate format (:mod:`embed_common.keys` writes them):

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
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
from zmq.utils.monitor import recv_monitor_message

log = logging.getLogger(__name__)

ZAP_DOMAIN = "embed-cluster"
BROKER_KEY = "broker.key"
BROKER_SECRET = "broker.key_secret"
ALLOWED_DIR = "allowed"

# A worker's reconnects to a LAN broker back off up to this many milliseconds (libzmq doubles the interval).
RECONNECT_IVL_MS = 1000
RECONNECT_IVL_MAX_MS = 30_000


class KeyFileError(ValueError):
    """A key file or directory that is missing or not a key in pyzmq's certificate format."""


def check_private(path: Path) -> None:
    """Refuse a secret key file that others can read, or a key directory that others can write, as ssh refuses
    an unprotected private key: another user of the machine could join as a worker (or as the broker) with it,
    or put their own key on the allow-list. POSIX only (Windows has no such mode bits)."""
    if os.name != "posix":
        return
    mode = path.stat().st_mode & 0o777
    if path.is_dir() and mode & 0o022:
        raise KeyFileError(f"the key directory {path} is writable by others (mode {mode:o}); "
                           f"fix it with: chmod go-w {path}")
    if path.is_file() and mode & 0o077:
        raise KeyFileError(f"the secret key file {path} is readable or writable by others (mode {mode:o}), so it "
                           f"is no secret: fix it with: chmod 600 {path}")


def load_keys(path: str | os.PathLike[str], need_secret: bool) -> tuple[bytes, bytes | None]:
    """(public, secret) z85 keys from a certificate file; a clear :class:`KeyFileError` when that fails (a
    secret key file that others may read, too: :func:`check_private`)."""
    path = Path(path)
    if not path.is_file():
        raise KeyFileError(f"key file {path} does not exist")
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"{path} is not a CurveZMQ key file: {exc}") from None
    if need_secret and not secret:
        raise KeyFileError(f"{path} holds no secret key: use a .key_secret file")
    if secret:
        check_private(path)
    return public, secret


def check_server_keys(keys_dir: str | os.PathLike[str]) -> None:
    """Raise :class:`KeyFileError` unless ``keys_dir`` holds the broker's key pair (``keys init`` makes it) and
    neither it nor its allow-list can be written by others."""
    keys = Path(keys_dir)
    load_keys(keys / BROKER_SECRET, need_secret=True)
    for directory in (keys, keys / ALLOWED_DIR):
        if directory.is_dir():
            check_private(directory)


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
