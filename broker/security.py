"""CurveZMQ for workers on the LAN, the broker's half: its encrypted ROUTER with a ZAP allow-list.

The broker's LAN socket is a CurveZMQ server; a ZAP handler (pyzmq's ThreadAuthenticator, started before the
socket binds) lets a worker finish the handshake only when its public key is a ``*.key`` file in
``KEYS/allowed/``. The list is read again on every handshake, so ``embed-cluster keys add-worker`` takes effect
without a restart (a key removed from it is refused from the next connection on). A refused worker never
completes the handshake, so none of its messages reaches the broker and it can never be given a job.
The key files and the worker's half: embed_common/curve.py.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from embed_common import sockets
from embed_common.curve import ALLOWED_DIR, BROKER_SECRET, ZAP_DOMAIN, KeyFileError, check_server_keys, load_keys

log = logging.getLogger(__name__)

REFUSAL_LOG_INTERVAL = 60.0  # a refused key that keeps knocking is logged again after this long


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
    check_server_keys(keys)  # the key pair, and directories no one else can write to
    public, secret = load_keys(keys / BROKER_SECRET, need_secret=True)
    allow_list = AllowList(keys / ALLOWED_DIR)
    auth = LanAuthenticator(context, allow_list)
    auth.start()  # before the bind: with no ZAP handler libzmq would let every CURVE client in
    auth.configure_curve_callback(domain=ZAP_DOMAIN, credentials_provider=allow_list)
    sock = context.socket(zmq.ROUTER, socket_class=LanSocket)
    sock.authenticator = auth
    try:
        sockets.configure_router(sock)
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
