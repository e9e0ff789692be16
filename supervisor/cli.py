"""The ``embed-cluster`` command: ``up`` runs the whole cluster; ``broker``, ``front`` and ``worker`` run one
part alone. Every flag also reads an ``EMBED_*`` environment variable (``--port`` <- ``EMBED_PORT``);
a flag on the command line wins. Settings are built here, once, at start-up.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from embed_common import settings as table
from embed_common.exits import ExitCode
from embed_common.settings import ENV_PREFIX


class EnvArgs:
    """Adds flags to a parser with defaults read from EMBED_* variables, and remembers every name."""

    known: set[str] = set()

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser

    def add(self, flag: str, *, default: Any = None, type: Callable[[str], Any] = str, help: str = "",
            choices: Sequence[Any] | None = None) -> None:
        name = ENV_PREFIX + flag.lstrip("-").upper().replace("-", "_")
        EnvArgs.known.add(name)
        raw = os.environ.get(name)
        if raw is not None and raw != "":
            try:
                default = type(raw)
            except (TypeError, ValueError):
                self.parser.error(f"{name}={raw!r} is not a valid value for {flag}")
            if choices is not None and default not in choices:
                self.parser.error(f"{name}={raw!r}: choose from {', '.join(map(str, choices))}")
        shown = help if help == argparse.SUPPRESS else f"{help} [env {name}]".strip()
        self.parser.add_argument(flag, default=default, type=type, choices=choices, help=shown)

    def flag(self, flag: str, help: str = "") -> None:
        name = ENV_PREFIX + flag.lstrip("-").upper().replace("-", "_")
        EnvArgs.known.add(name)
        default = os.environ.get(name, "").lower() in ("1", "true", "yes", "on")
        self.parser.add_argument(flag, action="store_true", default=default, help=f"{help} [env {name}]")


def add_settings(env: EnvArgs, part: str) -> None:
    """Every row of the settings table (embed_common/settings.py) that ``part`` takes, as a flag."""
    for setting in table.for_part(part):
        if setting.switch:
            env.flag(setting.flag, help=setting.help)
        else:
            env.add(setting.flag, default=setting.default, type=setting.convert, help=setting.help,
                    choices=setting.choices)
    if part in ("up", "front", "embed"):
        EnvArgs.known.update(table.ENV_ONLY)  # the API key: read from the environment only (http_front/auth.py)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="embed-cluster", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run the whole cluster: broker, front and workers")
    add_settings(EnvArgs(up), "up")
    broker = sub.add_parser("broker", help="run the broker alone")
    add_settings(EnvArgs(broker), "broker")
    front = sub.add_parser("front", help="run the HTTP front alone")
    add_settings(EnvArgs(front), "front")
    doctor = sub.add_parser("doctor", help="check that this machine can run the cluster (exit 0 when it can)")
    doctor.add_argument("--json", action="store_true", help="print one JSON document (for programs)")
    add_settings(EnvArgs(doctor), "doctor")
    worker = sub.add_parser("worker", help="run one model worker")
    add_settings(EnvArgs(worker), "worker")

    keys = sub.add_parser("keys", help="CurveZMQ keys for LAN workers (embed_common/keys.py)")
    keys.set_defaults(log_level="WARNING")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    init = keys_sub.add_parser("init", help="write DIR/broker.key, DIR/broker.key_secret and DIR/allowed/")
    init.add_argument("dir", help="key directory (give it to up/broker --keys)")
    init.add_argument("--exist-ok", action="store_true", help="keep an existing broker key instead of failing")
    add = keys_sub.add_parser("add-worker", help="write DIR/NAME.key_secret and allow NAME's public key")
    add.add_argument("dir", help="key directory made by keys init")
    add.add_argument("name", help="the worker's name (letters, digits, '.', '_', '-')")
    add.add_argument("--exist-ok", action="store_true", help="keep an existing key of NAME instead of failing")
    remove = keys_sub.add_parser("remove-worker", help="take NAME off the allow-list")
    remove.add_argument("dir", help="key directory made by keys init")
    remove.add_argument("name", help="the worker's name")
    add_embed(sub)
    cache = sub.add_parser("cache", help="the front's vector cache: stats (JSON) or clear")
    cache.add_argument("action", choices=("stats", "clear"))
    add_settings(EnvArgs(cache), "cache")
    return parser


def add_embed(sub: Any) -> None:
    embed = sub.add_parser("embed", help="embed files (.txt, .md, .jsonl, .pdf) or folders through a running "
                           "cluster into OUT, resumably (embed_client/bulk.py)")
    embed.add_argument("paths", nargs="+", metavar="PATH", help="files, or folders to search for them")
    embed.add_argument("-o", "--output", required=True, help="output folder: vectors, metadata.jsonl, manifest")
    add_settings(EnvArgs(embed), "embed")


def check_environment() -> None:
    unknown = sorted(k for k in os.environ if k.startswith(ENV_PREFIX) and k not in EnvArgs.known)
    if unknown:
        sys.exit(f"embed-cluster: unknown setting(s) {', '.join(unknown)}; "
                 f"known: {', '.join(sorted(EnvArgs.known))}")


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(process)d %(threadName)s %(name)s: %(message)s")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_environment()
    if getattr(args, "lan", None) and not args.keys:  # up and broker
        sys.exit("embed-cluster: --lan needs --keys DIR (create it with: embed-cluster keys init DIR)")
    configure_logging(args.log_level)
    if args.command == "up":
        return run_up(args)
    if args.command == "broker":
        return run_broker(args)
    if args.command == "front":
        return run_front(args)
    if args.command == "worker":
        return run_worker(args)
    if args.command == "keys":
        return run_keys(args)
    if args.command == "embed":
        return run_embed(args)
    if args.command == "cache":
        return run_cache(args)
    if args.command == "doctor":
        from supervisor.doctor import run_doctor  # imports nothing that may be missing

        return run_doctor(args.host, args.port, args.model, args.device, args.json)
    parser.error(f"unknown command {args.command}")
    return ExitCode.USAGE


def run_cache(args: argparse.Namespace) -> int:
    """``embed-cluster cache stats|clear``: the file --cache names, opened beside any front using it."""
    import json

    from http_front.embed_cache import cache_path, open_cache

    cache = open_cache(args.cache, args.cache_max_bytes)
    if cache is None:
        sys.exit(f"embed-cluster: no vector cache ({'--cache off' if args.cache == 'off' else 'cannot open it'})")
    try:
        if args.action == "clear":
            cache.store.clear()
        print(json.dumps({"path": str(cache_path(args.cache)), **cache.stats()}))
    finally:
        cache.close()
    return 0


def run_embed(args: argparse.Namespace) -> int:
    from pathlib import Path

    from embed_client.bulk import BulkSettings, run

    if args.concurrency < 1:
        sys.exit("embed-cluster: --concurrency must be at least 1")
    settings = table.settings_of(BulkSettings, args, "embed", paths=tuple(args.paths), out=Path(args.output),
                                 normalize=not args.no_normalize, progress_bar=not args.no_progress,
                                 api_key=os.environ.get("EMBED_API_KEY") or None)
    return run(settings)


def run_up(args: argparse.Namespace) -> int:
    from embed_common import lifeline
    from supervisor.supervisor import ClusterSettings, Supervisor

    check_bind(args.host, args.insecure)  # the key directory is checked by the supervisor (startup_failed)
    settings = table.settings_of(
        ClusterSettings, args, "up",
        # everything else up takes goes on to the children that take it, as the table says
        extra_front_args=tuple(table.child_argv(args, "front")),
        extra_broker_args=tuple(table.child_argv(args, "broker")),
        extra_worker_args=tuple(table.child_argv(args, "worker")),
    )
    supervisor = Supervisor(settings)
    lifeline.watch_parent(args.parent_pid)  # an app that spawned us and died (even by SIGKILL): stop in order
    return supervisor.run()


def run_broker(args: argparse.Namespace) -> int:
    from broker.broker import BrokerSettings
    from broker.main import run
    from embed_common.models import parse_models

    if args.lan:
        check_keys(keys_dir=args.keys)
    lan = f"tcp://{args.lan}" if args.lan and "://" not in args.lan else args.lan
    settings = table.settings_of(BrokerSettings, args, "broker", client_address=args.clients,
                                 worker_address=args.workers_address, lan_address=lan, keys_dir=args.keys,
                                 models=parse_models(args.expect_model) if args.expect_model else ())
    return run(settings, args.parent_pid)


def check_bind(host: str, insecure: bool) -> str | None:
    """The API key from the environment; exit when ``host`` is not loopback and there is none (http_front/auth)."""
    from http_front.auth import API_KEY_ENV, bind_refusal

    api_key = os.environ.get(API_KEY_ENV) or None
    refusal = bind_refusal(host, api_key, insecure)
    if refusal:
        sys.exit(f"embed-cluster: {refusal}")
    return api_key


def run_front(args: argparse.Namespace) -> int:
    from http_front.main import FrontSettings, run

    api_key = check_bind(args.host, args.insecure)
    settings = table.settings_of(FrontSettings, args, "front", threads=args.http_threads,
                                 limits=table.limits_of(args), api_key=api_key)
    return run(settings)


def run_worker(args: argparse.Namespace) -> int:
    from worker.main import run
    from worker.worker import WorkerSettings

    if bool(args.key) != bool(args.broker_key):
        sys.exit("embed-cluster: --key and --broker-key go together (CurveZMQ needs both)")
    if args.key:
        check_keys(broker_key=args.broker_key, key=args.key)
    else:
        from embed_common.curve import is_local_endpoint

        if not is_local_endpoint(args.broker):
            logging.getLogger(__name__).warning(
                "--broker %s is not on this machine but no --broker-key/--key is given: a broker's --lan port "
                "speaks CurveZMQ and will not hear this worker", args.broker)
    settings = table.settings_of(WorkerSettings, args, "worker")
    return run(settings)


def check_keys(keys_dir: str | None = None, broker_key: str | None = None, key: str | None = None) -> None:
    """Check the CurveZMQ key files before starting anything; a bad one ends the command with a clear message."""
    from embed_common.curve import KeyFileError, check_client_keys, check_server_keys

    try:
        if keys_dir:
            check_server_keys(keys_dir)
        if broker_key and key:
            check_client_keys(broker_key, key)
    except KeyFileError as exc:
        sys.exit(f"embed-cluster: {exc}")


def run_keys(args: argparse.Namespace) -> int:
    from embed_common import keys
    from embed_common.curve import KeyFileError

    try:
        if args.keys_command == "init":
            message = keys.init(args.dir, exist_ok=args.exist_ok)
        elif args.keys_command == "add-worker":
            message = keys.add_worker(args.dir, args.name, exist_ok=args.exist_ok)
        else:
            message = keys.remove_worker(args.dir, args.name)
    except (KeyFileError, OSError) as exc:
        sys.exit(f"embed-cluster keys {args.keys_command}: {exc}")
    print(message)
    return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
