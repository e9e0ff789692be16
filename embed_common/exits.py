"""THE exit-code table: what a process of ours means by its exit status, for every part and command.

The supervisor reads a child's status by it (a worker the broker REFUSED is not restarted), and every part
returns one of these, never a bare number (tests/unit/test_exits.py checks the source). To add a code: a row
here, ``return ExitCode.NAME`` where it is decided, and ``python -m embed_common.exits`` pasted into
docs/exit-codes.md (the test says when it is stale). A signal's death reads as its negative number
(-9: SIGKILL) in the supervisor, as Python's ``returncode`` gives it; that is not ours to number.
"""

from __future__ import annotations

import enum
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class ExitSpec:
    name: str
    code: int
    parts: str  # who exits with it
    meaning: str


TABLE: tuple[ExitSpec, ...] = (
    ExitSpec("OK", 0, "every command", "done, or (up, a part) stopped when asked: SIGTERM, SIGINT"),
    ExitSpec("FAILED", 1, "up, front, doctor, embed, any part", "`up` could not start (its `startup_failed` event "
             "says why), the front cannot bind its port, a `doctor` check failed, `embed` skipped a file or the "
             "cluster failed, a part's parent is gone, or a bad setting (the message says which)"),
    ExitSpec("USAGE", 2, "every command", "bad arguments (argparse's own code); `embed`: a bad path, `OUT` or "
             "cluster state"),
    ExitSpec("REFUSED", 3, "worker", "the broker refused this worker (another model or dimension): restarting "
             "will not help, so the supervisor does not"),
    ExitSpec("LOAD_FAILED", 4, "worker", "the worker could not load its model (its `worker_failed` says why)"),
    ExitSpec("INTERRUPTED", 130, "embed", "stopped by a signal before it was done (128 + SIGINT, as shells do)"),
)

# The codes as an enum (ExitCode.REFUSED == 3), made from the table.
ExitCode = enum.IntEnum("ExitCode", [(spec.name, spec.code) for spec in TABLE])  # type: ignore[misc]


def table_markdown() -> str:
    """docs/exit-codes.md's table."""
    rows = ["| code | name | who | meaning |", "|---|---|---|---|"]
    rows += [f"| {spec.code} | `{spec.name}` | {spec.parts} | {spec.meaning} |" for spec in TABLE]
    return "\n".join(rows)


if __name__ == "__main__":
    sys.stdout.write(table_markdown() + "\n")
