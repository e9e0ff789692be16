"""How a child of the supervisor makes sure it never outlives it.

On Linux the kernel sends SIGTERM when the parent dies (PR_SET_PDEATHSIG); everywhere, a daemon thread
also watches the parent pid and ends the process when it changes.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading
import time

from embed_common.exits import ExitCode

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1

# How long a worker may take to stop, decided here for both sides: on SIGTERM the worker gives the batch being
# encoded COMPUTE_GRACE seconds to finish (worker/main.py finish_compute), and the supervisor waits
# WORKER_STOP_GRACE before it SIGKILLs (supervisor/supervisor.py shutdown): that grace plus the time to say
# goodbye to the broker and exit, so that a batch that finishes within its grace is never killed.
COMPUTE_GRACE = 5.0
WORKER_STOP_GRACE = COMPUTE_GRACE + 5.0


def orphaned(parent_pid: int | None) -> bool:
    """True when this process was started by ``parent_pid`` and that parent is gone or going: re-parented
    already, or (Linux) the parent is a zombie. PR_SET_PDEATHSIG fires when the parent's *thread* that started
    us exits, which can be before the re-parenting shows in getppid(); a killed parent's leader thread is a
    zombie by then."""
    if not parent_pid:
        return False
    if os.getppid() != parent_pid:
        return True
    try:
        with open(f"/proc/{parent_pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (OSError, IndexError):
        return False


def watch_parent(parent_pid: int | None, interval: float = 0.5) -> None:
    """End this process (SIGTERM to itself, then exit) when ``parent_pid`` is no longer its parent."""
    if not parent_pid:
        return
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        except (OSError, AttributeError):
            pass

    def watch() -> None:
        while True:
            if os.getppid() != parent_pid:
                log.warning("parent %d is gone: exiting", parent_pid)
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)
                os._exit(ExitCode.FAILED)
            time.sleep(interval)

    if os.getppid() != parent_pid:
        os._exit(ExitCode.FAILED)
    threading.Thread(target=watch, name="lifeline", daemon=True).start()


def ignore_further_signals() -> None:
    """Once a part is stopping, ignore SIGTERM and SIGINT: the interpreter restores their default action when it
    finalises, so a second one (the supervisor's, after a process-group kill sent the first) would kill the
    process on its way out (exit -15). The supervisor still SIGKILLs a part that outstays its grace."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
