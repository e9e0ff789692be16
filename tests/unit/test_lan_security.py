"""LAN security in process: the key files `embed-cluster keys` writes, and real CurveZMQ handshakes on loopback
against broker.security's ROUTER and its ZAP allow-list (no model, no broker loop)."""

from __future__ import annotations

import logging
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from broker import security
from embed_common import curve
from embed_common import keys as key_files
from embed_common.curve import KeyFileError
from supervisor.cli import main as cli_main
from tests.conftest import eventually

DEADLINE = 15.0  # generous: the machine may be busy


@pytest.fixture
def key_dir(tmp_path: Path) -> Path:
    key_files.init(str(tmp_path / "keys"))
    return tmp_path / "keys"


def monitors() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "curve-monitor"]


@pytest.fixture
def context() -> Iterator[zmq.Context]:
    """A context terminated once every socket is closed (each thread closes its own: destroy() would abort)."""
    ctx = zmq.Context()
    yield ctx
    eventually(lambda: not monitors(), "every handshake monitor ended with its socket", DEADLINE)
    ctx.term()


def test_init_writes_the_broker_pair_in_pyzmq_format_with_a_private_secret(key_dir: Path) -> None:
    public, secret = zmq.auth.load_certificate(key_dir / "broker.key_secret")
    assert zmq.auth.load_certificate(key_dir / "broker.key") == (public, None)
    assert secret and len(public) == len(secret) == 40
    assert stat.S_IMODE((key_dir / "broker.key_secret").stat().st_mode) == 0o600
    assert (key_dir / "allowed").is_dir() and not list((key_dir / "allowed").iterdir())
    assert not [p for p in key_dir.iterdir() if p.name.startswith(".new-")]  # no scratch left behind


def test_init_never_replaces_a_broker_key(key_dir: Path) -> None:
    before = (key_dir / "broker.key_secret").read_bytes()
    with pytest.raises(KeyFileError, match="already exists"):
        key_files.init(str(key_dir))
    assert "kept" in key_files.init(str(key_dir), exist_ok=True)
    assert (key_dir / "broker.key_secret").read_bytes() == before


def test_add_worker_writes_its_secret_and_allows_its_public_key(key_dir: Path) -> None:
    message = key_files.add_worker(str(key_dir), "gpu-box")
    public, secret = zmq.auth.load_certificate(key_dir / "gpu-box.key_secret")
    assert secret and stat.S_IMODE((key_dir / "gpu-box.key_secret").stat().st_mode) == 0o600
    assert zmq.auth.load_certificates(key_dir / "allowed") == {public: True}
    assert "--key gpu-box.key_secret" in message
    with pytest.raises(KeyFileError, match="already has a key"):
        key_files.add_worker(str(key_dir), "gpu-box")
    assert "kept" in key_files.add_worker(str(key_dir), "gpu-box", exist_ok=True)
    assert zmq.auth.load_certificate(key_dir / "gpu-box.key_secret") == (public, secret)


@pytest.mark.parametrize("name", ["", "broker", "../evil", "a b", "-x", "x" * 65])
def test_add_worker_refuses_bad_names(key_dir: Path, name: str) -> None:
    with pytest.raises(KeyFileError, match="worker name"):
        key_files.add_worker(str(key_dir), name)


def test_add_worker_needs_init_first(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="keys init"):
        key_files.add_worker(str(tmp_path), "box")


def test_remove_worker_takes_it_off_the_list(key_dir: Path) -> None:
    key_files.add_worker(str(key_dir), "box")
    key_files.remove_worker(str(key_dir), "box")
    assert not list((key_dir / "allowed").iterdir()) and not (key_dir / "box.key_secret").exists()
    with pytest.raises(KeyFileError, match="not on the allow-list"):
        key_files.remove_worker(str(key_dir), "box")


def test_cli_keys_commands_and_their_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keys = str(tmp_path / "k")
    assert cli_main(["keys", "init", keys]) == 0
    assert cli_main(["keys", "add-worker", keys, "box"]) == 0
    assert "box.key_secret" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="already has a key"):
        cli_main(["keys", "add-worker", keys, "box"])
    with pytest.raises(SystemExit, match="does not exist"):
        cli_main(["worker", "--broker", "tcp://127.0.0.1:1", "--broker-key", f"{keys}/nope.key",
                  "--key", f"{keys}/box.key_secret"])
    with pytest.raises(SystemExit, match="holds no secret key"):
        cli_main(["worker", "--broker", "tcp://127.0.0.1:1", "--broker-key", f"{keys}/broker.key",
                  "--key", f"{keys}/broker.key"])
    with pytest.raises(SystemExit, match=r"broker\.key_secret does not exist"):
        cli_main(["broker", "--lan", "127.0.0.1:1", "--keys", str(tmp_path)])


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_a_secret_key_others_can_read_is_refused_as_ssh_does(key_dir: Path, mode: int) -> None:
    key_files.add_worker(str(key_dir), "box")
    for secret in (key_dir / "box.key_secret", key_dir / "broker.key_secret"):
        secret.chmod(mode)
        with pytest.raises(SystemExit, match=rf"{secret.name} is readable or writable by others.*chmod 600"):
            cli_main(["worker", "--broker", "tcp://127.0.0.1:1", "--broker-key", f"{key_dir}/broker.key",
                      "--key", str(key_dir / "box.key_secret")] if secret.name == "box.key_secret" else
                     ["broker", "--lan", "127.0.0.1:1", "--keys", str(key_dir)])
        with pytest.raises(KeyFileError, match="readable or writable by others"):
            curve.load_keys(secret, need_secret=True)
        secret.chmod(0o600)
    curve.check_server_keys(key_dir)
    curve.check_client_keys(str(key_dir / "broker.key"), str(key_dir / "box.key_secret"))
    (key_dir / "broker.key").chmod(0o644)  # a public key may be read by anyone
    curve.load_keys(key_dir / "broker.key", need_secret=False)


@pytest.mark.parametrize("where", ["", "allowed"])
def test_a_key_directory_others_can_write_is_refused(key_dir: Path, where: str) -> None:
    """Another user who can write there could put their own key on the allow-list, or replace the broker's."""
    directory = key_dir / where if where else key_dir
    directory.chmod(0o777)
    with pytest.raises(KeyFileError, match=rf"{directory} is writable by others.*chmod go-w"):
        curve.check_server_keys(key_dir)
    with pytest.raises(KeyFileError, match="writable by others"):
        security.lan_router(zmq.Context.instance(), "tcp://127.0.0.1:*", str(key_dir))
    directory.chmod(0o755)
    curve.check_server_keys(key_dir)


class Peer:
    """A CurveZMQ client of the LAN router, the way a worker's socket is configured."""

    def __init__(self, context: zmq.Context, address: str, key_dir: Path, secret: Path) -> None:
        self.sock = context.socket(zmq.DEALER)
        self.sock.linger = 0
        curve.configure_curve_client(self.sock, str(key_dir / "broker.key"), str(secret))
        self.sock.connect(address)

    def close(self) -> None:
        self.sock.close(linger=0)


def refusals(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The handshake refusals logged so far, by the router (broker.security) and by the peer (embed_common.curve)."""
    return [r.getMessage() for r in caplog.records
            if r.name in ("broker.security", "embed_common.curve") and "refused" in r.getMessage()]


def received(router: zmq.Socket, expect: bytes, timeout: float = DEADLINE) -> bool:
    """Whether ``expect`` arrives at the router within ``timeout``."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        if router.poll(max(1, int(min(left, 0.1) * 1000))) and router.recv_multipart()[-1] == expect:
            return True
    return False


def test_only_allowed_keys_get_through_and_the_list_is_read_on_every_connection(
        key_dir: Path, context: zmq.Context, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    key_files.add_worker(str(key_dir), "box")
    router = security.lan_router(context, "tcp://127.0.0.1:*", str(key_dir))
    address = router.getsockopt_string(zmq.LAST_ENDPOINT)
    try:
        allowed = Peer(context, address, key_dir, key_dir / "box.key_secret")
        allowed.sock.send(b"hello from box")
        assert received(router, b"hello from box")

        zmq.auth.create_certificates(key_dir, "stranger")  # a pair that is not on the list
        (key_dir / "stranger.key_secret").chmod(0o600)  # pyzmq writes it as the umask says
        stranger = Peer(context, address, key_dir, key_dir / "stranger.key_secret")
        stranger.sock.send(b"hello from a stranger")
        eventually(lambda: len(refusals(caplog)) >= 2, "both sides log the refusal", DEADLINE)
        assert not received(router, b"hello from a stranger", timeout=0.05)  # its handshake failed already
        public = zmq.auth.load_certificate(key_dir / "stranger.key_secret")[0].decode()
        refusals_ = refusals(caplog)
        assert any(f"public key {public} is not on the allow-list" in m and "from 127.0.0.1" in m
                   for m in refusals_), refusals_
        assert any("refused this worker's key" in m for m in refusals_)  # the worker's side says so too
        stranger.close()

        (key_dir / "late.key_secret").write_bytes((key_dir / "stranger.key_secret").read_bytes())
        (key_dir / "late.key_secret").chmod(0o600)
        (key_dir / "allowed" / "late.key").write_bytes((key_dir / "stranger.key").read_bytes())
        late = Peer(context, address, key_dir, key_dir / "late.key_secret")  # the stranger's key, now allowed
        late.sock.send(b"let in without a restart")
        assert received(router, b"let in without a restart")
        late.close()
        allowed.close()
    finally:
        router.close()
    assert router.authenticator is None  # closing the router stopped its ZAP thread


def test_a_revoked_key_is_refused_from_its_next_connection(key_dir: Path, context: zmq.Context,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    key_files.add_worker(str(key_dir), "box")
    secret = key_dir / "box.key_secret"
    kept = secret.read_bytes()
    router = security.lan_router(context, "tcp://127.0.0.1:*", str(key_dir))
    address = router.getsockopt_string(zmq.LAST_ENDPOINT)
    try:
        key_files.remove_worker(str(key_dir), "box")
        secret.write_bytes(kept)  # the worker machine still has its copy
        secret.chmod(0o600)
        peer = Peer(context, address, key_dir, secret)
        peer.sock.send(b"after revocation")
        eventually(lambda: refusals(caplog), "the router logs the refusal", DEADLINE)
        assert not received(router, b"after revocation", timeout=0.05)
        peer.close()
    finally:
        router.close()


def test_handshake_monitors_end_with_their_sockets(key_dir: Path, context: zmq.Context) -> None:
    key_files.add_worker(str(key_dir), "box")
    router = security.lan_router(context, "tcp://127.0.0.1:*", str(key_dir))
    address = router.getsockopt_string(zmq.LAST_ENDPOINT)
    try:
        for i in range(5):  # a worker makes a new socket on every reconnect
            peer = Peer(context, address, key_dir, key_dir / "box.key_secret")
            peer.sock.send(b"%d" % i)
            assert received(router, b"%d" % i)
            peer.close()
        eventually(lambda: not monitors(), "every handshake monitor ended with its socket", DEADLINE)
    finally:
        router.close()


def test_a_lan_router_needs_the_broker_secret(tmp_path: Path, context: zmq.Context) -> None:
    with pytest.raises(KeyFileError, match=r"broker\.key_secret does not exist"):
        security.lan_router(context, "tcp://127.0.0.1:*", str(tmp_path))
    with pytest.raises(KeyFileError, match="needs a key directory"):
        security.lan_router(context, "tcp://127.0.0.1:*", None)


@pytest.mark.parametrize(("address", "local"), [
    ("tcp://127.0.0.1:8423", True), ("tcp://localhost:8423", True), ("tcp://[::1]:8423", True),
    ("ipc:///tmp/run/workers.ipc", True), ("inproc://workers", True),
    ("tcp://198.51.100.1:8424", False), ("tcp://gpu-box:8424", False),
])
def test_which_broker_addresses_leave_this_machine(address: str, local: bool) -> None:
    assert curve.is_local_endpoint(address) is local
