"""THE settings table: every option of every part, once (waitress's ``adjustments.py`` is the model).

From each row come the ``embed-cluster`` flag (``--max-texts``), its ``EMBED_*`` variable (``EMBED_MAX_TEXTS``),
the argv that ``up`` hands the children that take it, and, for the front's limits, the ``Limits`` object and
``/info``'s ``limits``. A part's settings dataclass takes its defaults from here (:func:`default`). To add a
front limit: add a row with ``limit=True`` and use ``limits.<name>``; nothing else.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from embed_common.models import model_list

ENV_PREFIX = "EMBED_"
DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_PORT = 8421
DEFAULT_HOST = "127.0.0.1"
DEFAULT_URL = f"http://{DEFAULT_HOST}:{DEFAULT_PORT}"
PARTS = ("up", "broker", "front", "worker", "doctor", "embed", "cache")


def workers_value(raw: str) -> str:
    if raw == "auto":
        return raw
    if not raw.isdigit():
        raise ValueError(raw)
    return str(int(raw))


def positive_int(raw: str) -> int:
    value = int(raw)
    if value <= 0:
        raise ValueError(raw)
    return value


def unit_float(raw: str) -> float:
    value = float(raw)
    if not 0 < value <= 1:
        raise ValueError(raw)
    return value


def positive_float(raw: str) -> float:
    value = float(raw)
    if value <= 0:
        raise ValueError(raw)
    return value


HOST_NAME = re.compile(r"^(\*|[a-z0-9_-][a-z0-9_.-]*|\[[0-9a-f:.]+\])$")  # a name, an IPv4 or an [IPv6]


def host_names(raw: str) -> tuple[str, ...]:
    """``--allowed-hosts``: comma-separated names (no port: any port is allowed), or ``*`` for any Host."""
    names = tuple(dict.fromkeys(n.strip().lower() for n in raw.split(",") if n.strip()))
    if not all(HOST_NAME.match(name) for name in names):
        raise ValueError(raw)
    return names


def web_origins(raw: str) -> tuple[str, ...]:
    """``--allowed-origins``: comma-separated ``scheme://host[:port]`` (what a browser's Origin header says),
    ``*`` for any page, or ``null`` (what file:// pages and sandboxed frames send: any of them)."""
    origins = tuple(dict.fromkeys(o.strip().lower().rstrip("/") for o in raw.split(",") if o.strip()))
    for origin in origins:
        scheme, sep, netloc = origin.partition("://")
        if origin in ("*", "null"):
            continue
        if not sep or not scheme.isalpha() or not netloc or any(c in netloc for c in "/@?# "):
            raise ValueError(raw)
    return origins


DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16", "fp16", "fp16w", "int8")  # worker/engines.py: which engine offers each
BACKENDS = ("auto", "onnx", "openvino", "torch")  # worker/engines.py: the engine registry
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def device_value(raw: str) -> str:
    """auto, cpu, cuda, cuda:N or mps."""
    if raw in DEVICES or (raw.startswith("cuda:") and raw[5:].isdigit()):
        return raw
    raise ValueError(raw)


@dataclass(frozen=True)
class Setting:
    name: str  # the flag without its dashes: --max-texts, EMBED_MAX_TEXTS, attribute max_texts
    default: Any
    help: str
    parts: tuple[str, ...]  # the commands that take it
    convert: Callable[[str], Any] = str
    choices: tuple[Any, ...] | None = None
    switch: bool = False  # a flag without a value (store_true); its variable is 1/true/yes/on
    limit: bool = False  # a front limit: a field of Limits and of /info's "limits"
    planned: bool = False  # up's supervisor sets it for each child itself (addresses, devices, ...)

    @property
    def flag(self) -> str:
        return "--" + self.name

    @property
    def dest(self) -> str:
        return self.name.replace("-", "_")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.dest.upper()


S = Setting
UP_FRONT = ("up", "front")
UP_BROKER = ("up", "broker")
UP_WORKER = ("up", "worker")

SETTINGS: tuple[Setting, ...] = (
    # where things are
    S("host", DEFAULT_HOST, "address the HTTP front binds", UP_FRONT, planned=True),
    S("host", DEFAULT_HOST, "address the HTTP front would bind", ("doctor",)),
    S("port", DEFAULT_PORT, "HTTP port", (*UP_FRONT, "doctor"), int, planned=True),
    S("broker", "tcp://127.0.0.1:8422", "the broker's client address", ("front",), planned=True),
    S("broker", "tcp://127.0.0.1:8423", "the broker's worker address", ("worker",), planned=True),
    S("clients", "tcp://127.0.0.1:8422", "address fronts connect to", ("broker",), planned=True),
    S("workers-address", "tcp://127.0.0.1:8423", "address local workers connect to", ("broker",), planned=True),
    S("lan", None, "HOST:PORT where remote workers connect (CurveZMQ)", UP_BROKER, planned=True),
    S("keys", None, "key directory for --lan (embed-cluster keys init)", UP_BROKER, planned=True),
    S("expect-model", None, "the models served, as up's --model list: a pool each; workers of any other model "
      "are refused", ("broker",), model_list, planned=True),
    # the model and where it runs
    S("workers", "auto", "worker processes: N or auto (one per device)", ("up",), workers_value),
    S("model", DEFAULT_MODEL, "the models to serve, comma-separated, each [ALIAS=]ID_OR_PATH (a "
      "sentence-transformers embedding model or CrossEncoder reranker), each with its own workers; the first "
      "is the default", ("up",), model_list, planned=True),
    S("model", DEFAULT_MODEL, "sentence-transformers model id or local path", ("worker", "doctor"),
      planned=True),
    S("device", "auto", "auto, cpu, cuda, cuda:N or mps", UP_WORKER, device_value, planned=True),
    S("device", "auto", "auto, cpu, cuda, cuda:N or mps", ("doctor",)),
    S("precision", "auto", "number format (fp16w = fp16 weights, fp32 arithmetic; int8 only when asked); auto "
      "measures", UP_WORKER, choices=PRECISIONS, planned=True),
    S("threads", 0, "intra-op threads per compute thread (torch or ONNX Runtime; 0: 1 on CPU)", UP_WORKER, int,
      planned=True),
    S("compute-threads", 0, "forward passes at once in a worker, over one copy of the model (0: CPU cores / "
      "workers; 1 on GPU)", UP_WORKER, int, planned=True),
    S("backend", "auto", "the engine: auto measures those the device offers (docs/engine.md); onnx, openvino, "
      "torch", UP_WORKER, choices=BACKENDS, planned=True),
    S("min-cosine", 0.9995, "the fidelity check: auto never serves an engine whose vectors are further from fp32 "
      "sentence-transformers' (least cosine on a fixed check set)", UP_WORKER, unit_float),
    S("worker-id", "", "name shown in /health (default: host-pid)", ("worker",), planned=True),
    S("capacity", 0, "texts in flight per worker (0: by device)", UP_WORKER, int),
    S("token-budget", 0, "padded tokens per batch (0: by device)", UP_WORKER, int),
    S("broker-key", None, "the broker's public key file (for a --lan broker)", ("worker",)),
    S("key", None, "this worker's secret key file", ("worker",)),
    # the front
    S("http-threads", 32, "waitress request threads", UP_FRONT, int),
    S("max-body-bytes", 16 * 1024 * 1024, "largest request body", UP_FRONT, int, limit=True),
    S("max-texts", 2048, "most texts in one request", UP_FRONT, int, limit=True),
    S("max-text-chars", 100_000, "most characters in one text", UP_FRONT, int, limit=True),
    S("request-timeout", 30.0, "seconds before a request gets 504", UP_FRONT, positive_float, limit=True),
    S("max-pdf-pages", 1000, "most pages of a PDF to /embed/pdf", UP_FRONT, int, limit=True),
    S("pdf-timeout", 20.0, "seconds to read one PDF's text", UP_FRONT, positive_float, limit=True),
    # the HTTP server's (http_front/server.py); limits too, so that /info states them
    S("max-connections", 1000, "open HTTP connections at most; idle ones are closed, oldest first, as it is "
      "neared", UP_FRONT, positive_int, limit=True),
    S("idle-timeout", 30.0, "seconds an idle (keep-alive or half-sent) HTTP connection stays open", UP_FRONT,
      positive_float, limit=True),
    S("http-queue", 64, "requests that may wait for a request thread; more get 503 OVERLOADED at once", UP_FRONT,
      positive_int, limit=True),
    S("shutdown-grace", 30.0, "seconds to finish requests on SIGTERM", UP_FRONT, float, planned=True),
    S("cache", "on", "the vector cache: on (a file in the user's cache directory), off, or the file's PATH",
      (*UP_FRONT, "cache")),
    S("cache-max-bytes", 1 << 30, "the vector cache's size bound; least recently used vectors go past it",
      (*UP_FRONT, "cache"), positive_int),
    # the front's request policy (http_front/request_policy.py; docs/security.md)
    S("allowed-hosts", None, "Host names the front answers to besides localhost, 127.0.0.1 and [::1] "
      "(comma-separated, any port; * for any); checked on a loopback bind, and on any other where given",
      UP_FRONT, host_names),
    S("allowed-origins", None, "web origins (scheme://host[:port], comma-separated; * for any) whose pages "
      "may call the API (CORS); by default none but the status page's own", UP_FRONT, web_origins),
    S("insecure", False, "allow a non-loopback --host without EMBED_API_KEY (anyone who reaches it may use it)",
      UP_FRONT, switch=True),
    # the broker
    S("max-queue-texts", 50_000, "texts queued before 503 OVERLOADED", UP_BROKER, int),
    S("job-lease", 60.0, "seconds a worker may hold a job", UP_BROKER, positive_float),
    # embed-cluster embed
    S("url", DEFAULT_URL, "the cluster's HTTP address (key: EMBED_API_KEY)", ("embed",)),
    S("format", "npy", "vectors.npy (float32) or vectors.jsonl", ("embed",), choices=("npy", "jsonl")),
    S("chunk-tokens", None, "tokens a chunk at most (default: the model's limit)", ("embed",), int),
    S("overlap-tokens", None, "tokens shared with the chunk before (default: chunk-tokens // 8)", ("embed",), int),
    S("concurrency", 4, "files in flight", ("embed",), int),
    S("timeout", 120.0, "seconds one request may take", ("embed",), positive_float),
    S("no-normalize", False, "unnormalized vectors", ("embed",), switch=True),
    S("no-progress", False, "no progress bar on stderr", ("embed",), switch=True),
    # every part
    S("log-level", "INFO", "log level", PARTS, choices=LOG_LEVELS),
    S("parent-pid", 0, argparse.SUPPRESS, PARTS, int, planned=True),
)

# Variables that are read without a flag (a secret in argv would show in ps).
ENV_ONLY = ("EMBED_API_KEY",)


def for_part(part: str) -> list[Setting]:
    return [s for s in SETTINGS if part in s.parts]


def row(name: str, part: str) -> Setting:
    [found] = [s for s in SETTINGS if s.name == name and part in s.parts]
    return found


def default(name: str, part: str) -> Any:
    """The table's default of one setting of ``part``: what a part's settings dataclass starts from."""
    return row(name, part).default


LIMITS = [s for s in SETTINGS if s.limit]

# The front's limits, one field per limit row: made from the table, so that a row is all a new limit needs.
Limits = dataclasses.make_dataclass(
    "Limits", [(s.dest, type(s.default), dataclasses.field(default=s.default)) for s in LIMITS], frozen=True)
Limits.__doc__ = "The front's limits (embed_common/settings.py rows with limit=True); /info shows them."


def values(args: argparse.Namespace, settings: Iterable[Setting]) -> dict[str, Any]:
    return {s.dest: getattr(args, s.dest) for s in settings}


def settings_of(cls: type, args: argparse.Namespace, part: str, **given: Any) -> Any:
    """A part's settings dataclass ``cls`` from parsed arguments: every field named as a setting of ``part`` is
    that setting's value; ``given`` holds the rest (a field named otherwise, or made from several settings).
    A field that is neither keeps its dataclass default."""
    dests = {s.dest for s in for_part(part)}
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(given) - names)
    if unknown:
        raise TypeError(f"{cls.__name__} has no field(s) {', '.join(unknown)}")
    taken = {name: getattr(args, name) for name in names & dests if name not in given}
    return cls(**taken, **given)


def limits_of(args: argparse.Namespace) -> Any:
    """The front's Limits from parsed arguments."""
    return Limits(**values(args, LIMITS))


def child_argv(args: argparse.Namespace, part: str) -> list[str]:
    """What ``up`` passes on to a ``part`` child: every setting both take that the supervisor does not set
    for each child itself."""
    argv: list[str] = []
    for s in for_part(part):
        if "up" not in s.parts or s.planned:
            continue
        value = getattr(args, s.dest)
        if s.switch:
            argv += [s.flag] if value else []
        elif isinstance(value, tuple):  # a list setting (--allowed-hosts): given back as it is written
            argv += [s.flag, ",".join(value)]
        elif value is not None:
            argv += [s.flag, str(value)]
    return argv


def markdown_table() -> str:
    """The README's configuration table, from this one (``python -m embed_common.settings`` prints it)."""
    lines = ["| Option | Variable | Default | Commands | What |", "|---|---|---|---|---|"]
    for s in SETTINGS:
        if s.help == argparse.SUPPRESS:
            continue
        shown = "off" if s.switch else "" if s.default in (None, "") else f"`{s.default}`"
        lines.append(f"| `{s.flag}` | `{s.env}` | {shown} | {', '.join(s.parts)} | {s.help} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_table())
