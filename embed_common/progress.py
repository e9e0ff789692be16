"""PROGRESS events: the one line format that children and the supervisor print on stdout.

    PROGRESS:{"type": "<event type>", "data": {...}}

stdout carries nothing else; logs go to stderr.
"""

from __future__ import annotations

import json
import sys
import threading
from typing import Any, TextIO

PREFIX = "PROGRESS:"
_lock = threading.Lock()


def format_event(event_type: str, data: dict[str, Any]) -> str:
    return PREFIX + json.dumps({"type": event_type, "data": data}, separators=(",", ":"))


def emit(event_type: str, data: dict[str, Any], stream: TextIO | None = None) -> None:
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
