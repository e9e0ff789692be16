"""Key management for LAN workers: ``embed-cluster keys init|add-worker|remove-worker`` (see embed_common.curve
for what each file is for). Secret key files are written 0600 and appear whole or not at all."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

import zmq.auth

from embed_common.curve import ALLOWED_DIR, BROKER_KEY, BROKER_SECRET, KeyFileError

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def _create_pair(keys: Path, name: str, public_to: Path, secret_to: Path) -> None:
    """Make a key pair in a private scratch directory inside ``keys``, then move both files into place."""
    scratch = Path(tempfile.mkdtemp(prefix=".new-", dir=keys))  # 0700
    try:
        public, secret = (Path(p) for p in zmq.auth.create_certificates(scratch, name))
        public.chmod(0o644)
        secret.chmod(0o600)
        os.replace(secret, secret_to)
        os.replace(public, public_to)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def init(keys_dir: str, exist_ok: bool = False) -> str:
    """Create the broker's key pair and the (empty) allow-list in ``keys_dir``; a message for the user."""
    keys = Path(keys_dir)
    keys.mkdir(mode=0o700, parents=True, exist_ok=True)
    (keys / ALLOWED_DIR).mkdir(mode=0o755, exist_ok=True)
    if (keys / BROKER_SECRET).exists():
        if exist_ok:
            return f"{keys / BROKER_SECRET} exists: kept it"
        raise KeyFileError(f"{keys / BROKER_SECRET} already exists; a new broker key would lock out every "
                           f"worker (delete the file first if that is what you want)")
    _create_pair(keys, "broker", keys / BROKER_KEY, keys / BROKER_SECRET)
    return (f"wrote {keys / BROKER_KEY} (public: copy it to each worker machine) and {keys / BROKER_SECRET} "
            f"(secret: stays here); add workers with: embed-cluster keys add-worker {keys} NAME")


def add_worker(keys_dir: str, name: str, exist_ok: bool = False) -> str:
    """Create ``NAME``'s key pair: the secret file to copy to that machine, the public key onto the allow-list."""
    if not NAME_RE.match(name) or name == "broker":
        raise KeyFileError(f"worker name {name!r}: use letters, digits, '.', '_' or '-' (not 'broker')")
    keys = Path(keys_dir)
    if not (keys / BROKER_KEY).is_file():
        raise KeyFileError(f"{keys} has no {BROKER_KEY}: run embed-cluster keys init {keys} first")
    allowed = keys / ALLOWED_DIR
    allowed.mkdir(mode=0o755, exist_ok=True)
    public, secret = allowed / f"{name}.key", keys / f"{name}.key_secret"
    if public.exists() or secret.exists():
        if exist_ok and public.exists() and secret.exists():
            return f"worker {name} already has a key: kept {secret}"
        raise KeyFileError(f"worker {name} already has a key ({public} or {secret}); "
                           f"remove it first with: embed-cluster keys remove-worker {keys} {name}")
    _create_pair(keys, name, public, secret)
    return (f"allowed worker {name}. Copy {secret} and {keys / BROKER_KEY} to that machine and run there: "
            f"embed-cluster worker --broker tcp://BROKER_HOST:PORT --broker-key {BROKER_KEY} "
            f"--key {name}.key_secret")


def remove_worker(keys_dir: str, name: str) -> str:
    """Take ``NAME`` off the allow-list (from its next connection on) and delete its secret file here."""
    keys = Path(keys_dir)
    public, secret = keys / ALLOWED_DIR / f"{name}.key", keys / f"{name}.key_secret"
    if not NAME_RE.match(name) or not public.exists():
        raise KeyFileError(f"worker {name!r} is not on the allow-list in {keys / ALLOWED_DIR}")
    public.unlink()
    secret.unlink(missing_ok=True)
    return (f"removed worker {name} from the allow-list: new connections with its key are refused "
            f"(a connection already open stays until it drops)")
