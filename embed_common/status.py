"""The broker's STATUS reply as a type: parsed once when it arrives, read as attributes everywhere else.

A field of the wrong type reads as its default (a newer or older broker never breaks the front); fields this
type does not know yet are kept in ``extra``, so a new one can be read there before it gets its own attribute.
To add one: a field here (with its default and its check in :meth:`BrokerStatus.parse`), and the broker's
``status()`` that sends it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


@dataclass(frozen=True)
class BrokerStatus:
    broker_id: str | None = None
    ever_ready: bool = False
    model: str | None = None  # the cluster's model id, set by its first worker
    model_name: str | None = None  # its short name
    dim: int | None = None
    max_tokens: int | None = None
    models: list[dict[str, Any]] = field(default_factory=list)  # one Broker.describe_pool() each, the default first
    workers: list[dict[str, Any]] = field(default_factory=list)  # one Worker.describe() each
    workers_down: list[dict[str, Any]] = field(default_factory=list)  # the supervisor's local workers not serving
    queue_jobs: int = 0
    queue_texts: int = 0
    max_queue_texts: int | None = None
    counters: dict[str, int] = field(default_factory=dict)
    worker_restarts: dict[str, int] = field(default_factory=dict)
    worker_stats: dict[str, dict[str, Any]] = field(default_factory=dict)
    refused: list[dict[str, Any]] = field(default_factory=list)  # the latest workers refused (at, worker, host, reason)
    extra: dict[str, Any] = field(default_factory=dict)  # fields not above (e.g. a newer broker's)

    @classmethod
    def parse(cls, header: dict[str, Any]) -> BrokerStatus:
        def of(name: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
            value = header.get(name)
            ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
            return value if ok else default

        def positive(name: str) -> int | None:
            value = of(name, int)
            return value if value is not None and value > 0 else None

        known = {f.name for f in dataclasses.fields(cls)} | {"req"}
        return cls(
            broker_id=of("broker_id", str), ever_ready=of("ever_ready", bool, False), model=of("model", str),
            model_name=of("model_name", str), dim=positive("dim"), max_tokens=positive("max_tokens"),
            models=_dicts(header.get("models")), workers=_dicts(header.get("workers")),
            workers_down=_dicts(header.get("workers_down")),
            queue_jobs=of("queue_jobs", int, 0), queue_texts=of("queue_texts", int, 0),
            max_queue_texts=of("max_queue_texts", int), counters=of("counters", dict, {}),
            worker_restarts=of("worker_restarts", dict, {}), worker_stats=of("worker_stats", dict, {}),
            refused=_dicts(header.get("refused")),
            extra={k: v for k, v in header.items() if k not in known},
        )

    def workers_of(self, alias: str | None) -> list[dict[str, Any]]:
        """The workers of one model's pool (None: every worker)."""
        return [w for w in self.workers if alias is None or w.get("model") == alias]
