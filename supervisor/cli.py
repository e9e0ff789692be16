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

ENV_PREFIX = "EMBED_"


class EnvArgs:
    """Adds flags to a parser with defaults read from EMBED_* variables, and remembers every name."""

    known: set[str] = set()

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser

    def add(self, flag: str, *, default: Any = None, type: Callable[[str], Any] = str, help: str = "",
            choices: Sequence[Any] | None = None, env: str | None = None) -> None:
        name = env or ENV_PREFIX + flag.lstrip("-").upper().replace("-", "_")
        EnvArgs.known.add(name)
        raw = os.environ.get(name)
        if raw is not None and raw != "":
            try:
                default = type(raw)
            except (TypeError, ValueError):
                self.parser.error(f"{name}={raw!r} is not a valid value for {flag}")
            if choices is not None and default not in choices:
                self.parser.error(f"{name}={raw!r}: choose from {', '.join(map(str, choices))}")
        self.parser.add_argument(flag, default=default, type=type, choices=choices,
                                 help=f"{help} [env {name}]".strip())

    def flag(self, flag: str, help: str = "") -> None:
        name = ENV_PREFIX + flag.lstrip("-").upper().replace("-", "_")
        EnvArgs.known.add(name)
        default = os.environ.get(name, "").lower() in ("1", "true", "yes", "on")
        self.parser.add_argument(flag, action="store_true", default=default, help=f"{help} [env {name}]")


def workers_value(raw: str) -> str:
    if raw == "auto":
        return raw
    if not raw.isdigit():
        raise ValueError(raw)
    return str(int(raw))


def positive_float(raw: str) -> float:
    value = float(raw)
    if value <= 0:
        raise ValueError(raw)
    return value


DEVICES = ("auto", "cpu", "cuda", "mps")


def device_value(raw: str) -> str:
    """auto, cpu, cuda, cuda:N or mps."""
    if raw in DEVICES or (raw.startswith("cuda:") and raw[5:].isdigit()):
        return raw
    raise ValueError(raw)
PRECISIONS = ("auto", "fp32", "bf16", "fp16", "fp16w")  # worker/precision.py says what each is


def add_common(env: EnvArgs) -> None:
    env.add("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"), help="log level")
    env.add("--parent-pid", default=0, type=int, help=argparse.SUPPRESS)


def add_front_limits(env: EnvArgs) -> None:
    env.add("--max-body-bytes", default=16 * 1024 * 1024, type=int, help="largest request body")
    env.add("--max-texts", default=2048, type=int, help="most texts in one request")
    env.add("--max-text-chars", default=100_000, type=int, help="most characters in one text")
    env.add("--request-timeout", default=30.0, type=positive_float, help="seconds before a request gets 504")
    env.add("--max-pdf-pages", default=1000, type=int, help="most pages of a PDF to /embed/pdf")
    env.add("--pdf-timeout", default=20.0, type=positive_float, help="seconds to read one PDF's text")
    env.add("--shutdown-grace", default=30.0, type=float, help="seconds to finish requests on SIGTERM")


def add_front_auth(env: EnvArgs) -> None:
    # the key itself is read from EMBED_API_KEY only (http_front/auth.py): a flag would show it in argv
    EnvArgs.known.add("EMBED_API_KEY")
    env.flag("--insecure", help="allow a non-loopback --host without EMBED_API_KEY (anyone who reaches it "
                                "may use it)")


def add_broker_limits(env: EnvArgs) -> None:
    env.add("--max-queue-texts", default=50_000, type=int, help="texts queued before 503 OVERLOADED")
    env.add("--job-lease", default=60.0, type=positive_float, help="seconds a worker may hold a job")


def add_worker_model(env: EnvArgs) -> None:
    env.add("--model", default="sentence-transformers/all-MiniLM-L6-v2",
            help="sentence-transformers model id or local path")
    env.add("--device", default="auto", type=device_value, help="auto, cpu, cuda, cuda:N or mps")
    env.add("--precision", default="auto", choices=PRECISIONS,
            help="number format: fp16w = fp16 weights, fp32 arithmetic (CPU); auto measures")
    env.add("--threads", default=0, type=int, help="torch threads per CPU worker (0: cores / workers)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="embed-cluster", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run the whole cluster: broker, front and workers")
    env = EnvArgs(up)
    env.add("--host", default="127.0.0.1", help="address the HTTP front binds")
    env.add("--port", default=8421, type=int, help="HTTP port")
    env.add("--workers", default="auto", type=workers_value, help="worker processes: N or auto (one per device)")
    add_worker_model(env)
    env.add("--lan", default=None, help="HOST:PORT where remote workers connect (CurveZMQ)")
    env.add("--keys", default=None, help="key directory for --lan (embed-cluster keys init)")
    add_front_limits(env)
    add_broker_limits(env)
    add_front_auth(env)
    add_common(env)

    broker = sub.add_parser("broker", help="run the broker alone")
    env = EnvArgs(broker)
    env.add("--clients", default="tcp://127.0.0.1:8422", help="address fronts connect to")
    env.add("--workers-address", default="tcp://127.0.0.1:8423", help="address local workers connect to")
    env.add("--lan", default=None, help="HOST:PORT where remote workers connect (CurveZMQ)")
    env.add("--keys", default=None, help="key directory for --lan")
    env.add("--expect-model", default=None, help="refuse workers that serve another model")
    add_broker_limits(env)
    add_common(env)

    front = sub.add_parser("front", help="run the HTTP front alone")
    env = EnvArgs(front)
    env.add("--broker", default="tcp://127.0.0.1:8422", help="the broker's client address")
    env.add("--host", default="127.0.0.1", help="address to bind")
    env.add("--port", default=8421, type=int, help="HTTP port")
    env.add("--http-threads", default=32, type=int, help="waitress request threads")
    add_front_limits(env)
    add_front_auth(env)
    add_common(env)

    doctor = sub.add_parser("doctor", help="check that this machine can run the cluster (exit 0 when it can)")
    env = EnvArgs(doctor)
    env.add("--host", default="127.0.0.1", help="address the HTTP front would bind")
    env.add("--port", default=8421, type=int, help="HTTP port that must be free")
    env.add("--model", default="sentence-transformers/all-MiniLM-L6-v2", help="model that must be available")
    env.add("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    doctor.add_argument("--json", action="store_true", help="print one JSON document (for programs)")
    add_common(env)

    worker = sub.add_parser("worker", help="run one model worker")
    env = EnvArgs(worker)
    env.add("--broker", default="tcp://127.0.0.1:8423", help="the broker's worker address")
    add_worker_model(env)
    env.add("--worker-id", default="", help="name shown in /health (default: host-pid)")
    env.add("--capacity", default=0, type=int, help="texts in flight (0: by device)")
    env.add("--token-budget", default=0, type=int, help="padded tokens per batch (0: by device)")
    env.add("--broker-key", default=None, help="the broker's public key file (for a --lan broker)")
    env.add("--key", default=None, help="this worker's secret key file")
    add_common(env)

    keys = sub.add_parser("keys", help="CurveZMQ keys for LAN workers (broker.keys)")
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
    return parser


def add_embed(sub: Any) -> None:
    embed = sub.add_parser("embed", help="embed files (.txt, .md, .jsonl, .pdf) or folders through a running "
                           "cluster into OUT, resumably (embed_client/bulk.py)")
    embed.add_argument("paths", nargs="+", metavar="PATH", help="files, or folders to search for them")
    embed.add_argument("-o", "--output", required=True, help="output folder: vectors, metadata.jsonl, manifest")
    env = EnvArgs(embed)
    env.add("--url", default="http://127.0.0.1:8421", help="the cluster's HTTP address (key: EMBED_API_KEY)")
    env.add("--format", default="npy", choices=("npy", "jsonl"), help="vectors.npy (float32) or vectors.jsonl")
    env.add("--chunk-tokens", default=None, type=int, help="tokens a chunk at most (default: the model's limit)")
    env.add("--overlap-tokens", default=None, type=int, help="tokens shared with the chunk before "
            "(default: chunk-tokens // 8)")
    env.add("--concurrency", default=4, type=int, help="files in flight")
    env.add("--timeout", default=120.0, type=positive_float, help="seconds one request may take")
    env.flag("--no-normalize", help="unnormalized vectors")
    env.flag("--no-progress", help="no progress bar on stderr")
    add_common(env)


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
    if args.command == "doctor":
        from supervisor.doctor import run_doctor  # imports nothing that may be missing

        return run_doctor(args.host, args.port, args.model, args.device, args.json)
    parser.error(f"unknown command {args.command}")
    return 2


def run_embed(args: argparse.Namespace) -> int:
    from pathlib import Path

    from embed_client.bulk import BulkSettings, run

    if args.concurrency < 1:
        sys.exit("embed-cluster: --concurrency must be at least 1")
    settings = BulkSettings(paths=tuple(args.paths), out=Path(args.output), url=args.url, format=args.format,
                            chunk_tokens=args.chunk_tokens, overlap_tokens=args.overlap_tokens,
                            normalize=not args.no_normalize, concurrency=args.concurrency, timeout=args.timeout,
                            api_key=os.environ.get("EMBED_API_KEY") or None, progress_bar=not args.no_progress)
    return run(settings)


def limits_from(args: argparse.Namespace) -> Any:
    from http_front.app import Limits

    return Limits(args.max_body_bytes, args.max_texts, args.max_text_chars, args.request_timeout,
                  max_pdf_pages=args.max_pdf_pages, pdf_timeout=args.pdf_timeout)


def run_up(args: argparse.Namespace) -> int:
    from supervisor.supervisor import ClusterSettings, Supervisor

    if args.lan and not args.keys:
        sys.exit("embed-cluster: --lan needs --keys DIR (create it with: embed-cluster keys init DIR)")
    if args.lan:
        check_keys(keys_dir=args.keys)
    check_bind(args.host, args.insecure)
    front_args = ("--max-body-bytes", str(args.max_body_bytes), "--max-texts", str(args.max_texts),
                  "--max-text-chars", str(args.max_text_chars), "--request-timeout", str(args.request_timeout),
                  "--max-pdf-pages", str(args.max_pdf_pages), "--pdf-timeout", str(args.pdf_timeout),
                  "--log-level", args.log_level, *(("--insecure",) if args.insecure else ()))
    settings = ClusterSettings(
        host=args.host, port=args.port, workers=args.workers, model=args.model, device=args.device,
        precision=args.precision, threads=args.threads, lan=args.lan, keys=args.keys,
        shutdown_grace=args.shutdown_grace, extra_front_args=front_args,
        extra_broker_args=("--max-queue-texts", str(args.max_queue_texts), "--job-lease", str(args.job_lease),
                           "--log-level", args.log_level),
        extra_worker_args=("--log-level", args.log_level),
    )
    return Supervisor(settings).run()


def run_broker(args: argparse.Namespace) -> int:
    from broker.broker import BrokerSettings
    from broker.main import run

    if args.lan and not args.keys:
        sys.exit("embed-cluster: --lan needs --keys DIR (create it with: embed-cluster keys init DIR)")
    if args.lan:
        check_keys(keys_dir=args.keys)
    lan = f"tcp://{args.lan}" if args.lan and "://" not in args.lan else args.lan
    settings = BrokerSettings(client_address=args.clients, worker_address=args.workers_address,
                              lan_address=lan, keys_dir=args.keys, model=args.expect_model,
                              max_queue_texts=args.max_queue_texts, job_lease=args.job_lease)
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
    settings = FrontSettings(broker=args.broker, host=args.host, port=args.port, threads=args.http_threads,
                             limits=limits_from(args), shutdown_grace=args.shutdown_grace,
                             parent_pid=args.parent_pid, api_key=api_key)
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
    settings = WorkerSettings(broker=args.broker, model=args.model, device=args.device,
                              precision=args.precision, threads=args.threads, capacity=args.capacity,
                              token_budget=args.token_budget, worker_id=args.worker_id,
                              broker_key=args.broker_key, key=args.key, parent_pid=args.parent_pid)
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
