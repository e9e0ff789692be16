"""PROGRESS events: the one line format that children and the supervisor print on stdout.

    PROGRESS:{"type": "<event type>", "data": {...}}

stdout carries nothing else; logs go to stderr. Every event is a row of the one table, embed_common/events.py:
:func:`emit` checks each line against it (logged when off the table; raised under :data:`STRICT`, as in the
tests).
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from typing import Any, TextIO

from embed_common import events

log = logging.getLogger(__name__)

PREFIX = "PROGRESS:"
STRICT = False  # the tests set it (tests/conftest.py): an event off the table raises instead of being logged
_lock = threading.Lock()


class EventError(ValueError):
    """An event the table (embed_common/events.py) does not allow: a programming error."""


def format_event(event_type: str, data: dict[str, Any]) -> str:
    return PREFIX + json.dumps({"type": event_type, "data": data}, separators=(",", ":"))


def emit(event_type: str, data: dict[str, Any], stream: TextIO | None = None) -> None:
    wrong = events.problems(event_type, data)
    if wrong:
        if STRICT:
            raise EventError("; ".join(wrong))
        log.error("a PROGRESS event off the table: %s", "; ".join(wrong))
    line = format_event(event_type, data)
    with _lock:
        out = stream or sys.stdout
        out.write(line + "\n")
        out.flush()


def parse_line(line: str) -> dict[str, Any] | None:
    """The event on one stdout line, or None when the line is not a well-formed PROGRESS event."""
    if not line.startswith(PREFIX):
        return None
    try:
        event = json.loads(line[len(PREFIX):])
    except ValueError:
        return None
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        return None
    if not isinstance(event.get("data"), dict):
        event["data"] = {}
    return event
