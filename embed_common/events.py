"""THE PROGRESS event table: every event type a part of ours prints, who prints it, its data and what it means.

From this one list come: the check of every line emitted (embed_common/progress.py ``emit``: an unknown type, a
missing or an unlisted field is an error, raised in the tests), the README's "PROGRESS events" table (checked by
tests/unit/test_events.py) and the TypeScript union (clients/typescript/src/progress_events.ts, generated).

To add an event: one row below, then ``python -m embed_common.events typescript >
clients/typescript/src/progress_events.ts`` and paste ``python -m embed_common.events readme`` into the README
(the tests say when either is stale). ``data`` is written as TypeScript's object members, ``name: type`` or
``name?: type`` (may be absent), ``;`` between them; ``[key: string]: unknown`` lets it carry more.

``printer`` is the command whose stdout carries it: ``up`` (its own events and its children's that it relays;
``emitter`` says who makes it) or ``embed`` (``embed-cluster embed``). A worker adds its ``worker`` name to every
event it prints; ``up`` relays a child's event with the child's name in ``worker``.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass

OPEN = "[key: string]: unknown"  # the member that lets an event carry fields not listed


@dataclass(frozen=True)
class EventSpec:
    type: str
    emitter: str  # who makes it: supervisor, worker, front, broker, embed
    data: str  # TypeScript object members, "name: type; name?: type"
    meaning: str
    printer: str = "up"

    def members(self) -> list[tuple[str, bool, str]]:
        """(name, required, TypeScript type) of each listed field."""
        found = []
        for member in filter(None, (m.strip() for m in self.data.split(";"))):
            if member != OPEN:
                name, kind = member.split(":", 1)
                found.append((name.rstrip("?").strip(), not name.endswith("?"), kind.strip()))
        return found

    @property
    def required(self) -> frozenset[str]:
        return frozenset(name for name, required, _ in self.members() if required)

    @property
    def fields(self) -> frozenset[str]:
        return frozenset(name for name, _, _ in self.members())

    @property
    def open(self) -> bool:
        return OPEN in self.data


TABLE: tuple[EventSpec, ...] = (
    # the seed's events, once for the cluster (a worker prints them for itself; up relays the first worker's)
    # (once per model: ``alias`` names it where the cluster serves several, embed_common/models.py)
    EventSpec("model_cached", "worker", "model: string; alias?: string; worker?: string",
              "the first worker found the model on disk (bundled, local path or HF cache)"),
    EventSpec("download_started", "worker", "model: string; alias?: string; worker?: string",
              "the first worker must download it"),
    EventSpec("download_progress", "worker", "model: string; file: string; files_done: number; files_total: number; "
              "bytes_done: number; bytes_total: number; alias?: string; worker?: string", "after each downloaded file"),
    EventSpec("model_loaded", "supervisor", "model: string; dimensions: number; "
              "models?: { alias: string, model: string, kind: string, dimensions: number }[]; worker?: string; "
              "kind?: string; device?: string; precision?: string; backend?: string; cosine?: number | null; "
              "compute_threads?: number; seconds?: number",
              "a worker of every model can serve and the front listens (it has seen them ready): the cluster is "
              "ready and `/health` says ok from this line on. `model` is the default model; `models` lists every "
              "one where there are several. A worker prints its own, with its other fields, which `up` relays "
              "as `worker_loaded`"),
    # the parts' own events
    EventSpec("broker_listening", "broker", "clients?: string; workers?: string; lan?: string | null",
              "the broker's sockets are bound"),
    EventSpec("front_listening", "front", "host: string; port: number; url: string; status_url?: string",
              "the front serves HTTP (status_url: the live status page)"),
    EventSpec("front_ready", "front", "",
              "the front sees a ready worker (`up` waits for it before `model_loaded`, and does not relay it; a "
              "`front` started alone prints it)"),
    EventSpec("worker_started", "supervisor", "worker: string; pid: number; device: string",
              "`up` started a worker process"),
    EventSpec("worker_loaded", "supervisor", "worker: string; model: string; dimensions: number; device: string; "
              "precision: string; kind?: string; backend?: string; cosine?: number | null; "
              "compute_threads?: number; seconds: number",
              "a worker loaded its model (`kind`: embed, or rerank for a cross-encoder; `backend`: the engine, "
              "docs/engine.md; `cosine`: its fidelity check)"),
    EventSpec("model_preparing", "worker", f"model: string; step: string; worker?: string; {OPEN}",
              "a first start prepares the model before loading it (`step`: onnx_export, the export for ONNX "
              "Runtime, once: later starts reuse it)"),
    EventSpec("model_prepared", "worker", f"model: string; step: string; seconds: number; cosine?: number | null; "
              f"worker?: string; {OPEN}", "that preparation is done; `cosine` is its check against the reference"),
    EventSpec("backend_fallback", "worker", f"model: string; backend: string | null; reason: string; "
              f"dropped?: string[]; worker?: string; {OPEN}", "engines that cannot take the model (`dropped`: the "
              "ONNX export fails) are left out of `auto`'s candidates; `backend` is the first that remains, "
              "`reason` says why"),
    EventSpec("engine_measuring", "worker", "model: string; candidates: string[]; cached: string[]; "
              "worker?: string", "a first start measures the candidate engines (`engine/precision`) the cache "
              "does not hold (docs/engine.md)"),
    EventSpec("engine_measured", "worker", "model: string; engine: string; precision: string; cosine: number; "
              "texts_per_s: number; lone_ms: number; memory_mb: number; error: string; worker?: string",
              "one candidate's figures: least cosine to fp32 sentence-transformers on the check set, a batch "
              "mix's texts/s, a lone text's ms, its process's PSS; `error` when it could not run here"),
    EventSpec("engine_chosen", "worker", "model: string; engine: string; precision: string; cosine?: number; "
              "texts_per_s?: number; lone_ms?: number; memory_mb?: number; forced: boolean; measured: boolean; "
              "seconds: number; min_cosine: number; rejected: { [name: string]: string }; worker?: string",
              "every start: the engine and precision that serve, with their figures (`measured`: false when "
              "read from the cache; `forced`: named by --backend and --precision)"),
    EventSpec("worker_ready", "worker", "worker: string; pid?: number; device?: string; precision?: string",
              "a worker registered with the broker and serves"),
    EventSpec("worker_reconnected", "worker", "worker: string; pid?: number; device?: string; precision?: string",
              "a worker registered again (the broker restarted, or it was presumed dead)"),
    EventSpec("worker_disconnected", "worker", "worker: string",
              "a worker lost the broker (no heartbeat within its liveness) and reconnects"),
    EventSpec("worker_refused", "worker", "worker: string; code?: string; message?: string",
              "the broker refused a worker (`code`: MODEL_MISMATCH: another model or dimension)"),
    EventSpec("worker_exited", "supervisor", "worker: string; pid?: number; code: number | null; "
              "restart_in?: number | null", "a worker process exited (`code`: embed_common/exits.py; a negative "
              "one is the signal that killed it); restart_in: seconds until `up` starts it again, null when it "
              "will not"),
    EventSpec("worker_restarted", "supervisor", "worker: string; pid: number; device: string; restarts: number",
              "`up` started an exited worker again"),
    EventSpec("worker_failed", "worker", "worker: string; reason: string; error?: string; failures?: number; "
              "retry_in?: number", "a worker cannot serve: its model did not load (`error`: MODEL_LOAD_FAILED), "
              "the broker refused it, or it crashed `failures` times in a row (then `up` retries in retry_in "
              "seconds)"),
    EventSpec("startup_failed", "supervisor", "code: string; reason: string; part: string",
              "`up` could not start (`code`: one of doctor's, e.g. PORT_IN_USE, MODEL_UNAVAILABLE, "
              "DEVICE_UNAVAILABLE, KEYS_INVALID): printed once, then it exits 1"),
    EventSpec("shutdown_started", "supervisor", "", "`up` is stopping its parts"),
    EventSpec("shutdown_complete", "supervisor", "", "every part has stopped"),
    # embed-cluster embed
    EventSpec("embed_file", "embed", "file: string; rows: number; error: string | null; files_done: number; "
              "files_total: number; rows_total: number; texts_per_s: number", "a file is done (or skipped: "
              "`error`)", printer="embed"),
    EventSpec("embed_finished", "embed", "files_done: number; files_total: number; rows: number; skipped: number; "
              "interrupted: boolean; output: string; cache_hits: number; cache_lookups: number",
              "the run is over (cache_hits of cache_lookups texts answered by the cluster's vector cache)",
              printer="embed"),
)

EVENTS: dict[str, EventSpec] = {spec.type: spec for spec in TABLE}


def problems(event_type: str, data: dict) -> list[str]:
    """What is wrong with an event by the table: an unknown type, a required field missing, a field not listed."""
    spec = EVENTS.get(event_type)
    if spec is None:
        return [f"{event_type!r} is not an event in embed_common/events.py"]
    found = [f"{event_type}: field {name!r} missing" for name in sorted(spec.required - data.keys())]
    if not spec.open:
        found += [f"{event_type}: field {name!r} not in embed_common/events.py" for name in sorted(data.keys() -
                                                                                               spec.fields)]
    return found


# -- the README's table and the TypeScript union, written from the table ------------------------------------

def readme_table() -> str:
    """The README's "PROGRESS events" table: the events ``up`` prints (``embed``'s are in its own section). A
    snake_case name in backticks there is an event: the TypeScript tests parse each as one."""
    rows = ["| type | from | data | when |", "|---|---|---|---|"]
    for spec in (spec for spec in TABLE if spec.printer == "up"):
        data = ", ".join(name + ("" if required else "?") for name, required, _ in spec.members())
        data = "{" + data + (", ..." if spec.open else "") + "}"
        rows.append(f"| `{spec.type}` | {spec.emitter} | `{data}` | {spec.meaning} |")
    return "\n".join(rows)


def type_name(event_type: str) -> str:
    return "".join(word.capitalize() for word in event_type.split("_")) + "Event"


def _doc(text: str) -> str:
    """A TypeScript doc comment of ``text``, wrapped at 110 columns."""
    words, lines, line = re.sub(r"`([^`]*)`", r"\1", text).split(), [], ""
    for word in words:
        if len(line) + len(word) > 106:
            lines.append(line)
            line = ""
        line = f"{line} {word}" if line else word
    lines.append(line)
    if len(lines) == 1 and len(lines[0]) < 110:
        return f"/** {lines[0]} */"
    return "/**\n" + "".join(f" * {part}\n" for part in lines) + " */"


def typescript() -> str:
    """clients/typescript/src/progress_events.ts: the events ``up`` prints, a type each, and their union."""
    out = ["// Generated from embed_common/events.py by `python -m embed_common.events typescript`: do not edit.",
           "// tests/unit/test_events.py fails when it is stale.", "",
           "/** A PROGRESS event: its `type` and its `data`. */",
           "export interface Event<T extends string, D> {", "  type: T;", "  data: D;", "}"]
    cluster = [spec for spec in TABLE if spec.printer == "up"]
    for spec in cluster:
        members = [m.strip() for m in spec.data.split(";") if m.strip()]
        head = f'export type {type_name(spec.type)} = Event<"{spec.type}", '
        line = head + (f"{{ {'; '.join(members)} }}" if members else "Record<string, never>") + ">;"
        if len(line) > 118:
            line = head + "{\n" + "".join(f"  {member};\n" for member in members) + "}>;"
        out += ["", _doc(spec.meaning), line]
    out += ["", "/** Every event `embed-cluster up` prints, as this package knows them. */",
            "export type ClusterEvent ="] + [f"  | {type_name(spec.type)}" for spec in cluster]
    out[-1] += ";"
    out += ["", "/** The type of every ClusterEvent. */",
            'export const CLUSTER_EVENT_TYPES: ReadonlySet<string> = new Set<ClusterEvent["type"]>([']
    out += [f'  "{spec.type}",' for spec in cluster] + ["]);"]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    which = sys.argv[1] if len(sys.argv) == 2 else ""
    if which not in ("readme", "typescript"):
        sys.exit("usage: python -m embed_common.events readme|typescript")
    sys.stdout.write(readme_table() + "\n" if which == "readme" else typescript())
