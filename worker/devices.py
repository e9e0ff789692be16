"""Which devices this machine can run a worker on: one per CUDA GPU, else Apple MPS, else the CPU.

``python -m worker.devices`` prints them as JSON, so that the supervisor can plan workers without
importing torch itself.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass


def detect_devices() -> list[str]:
    """GPUs without importing torch: CUDA_VISIBLE_DEVICES, the NVIDIA driver's /proc entries, Apple silicon."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    count = 0
    if visible is not None:
        count = len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    elif os.path.isdir("/proc/driver/nvidia/gpus"):
        count = len(os.listdir("/proc/driver/nvidia/gpus"))
    elif shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10).stdout
            count = sum(1 for line in out.splitlines() if line.startswith("GPU "))
        except (OSError, subprocess.SubprocessError):
            count = 0
    if count:
        return [f"cuda:{i}" for i in range(count)]
    if sys.platform == "darwin" and os.uname().machine == "arm64":
        return ["mps"]
    return ["cpu"]


def gpu_driver_present() -> bool:
    """Whether a GPU could be usable here although :func:`detect_devices` counted none: NVIDIA's device nodes
    (``/dev/nvidiactl``; ``/dev/dxg`` under WSL2) exist, or this is Apple silicon, or a platform without such
    nodes. Without them no CUDA program runs, so start-up need not ask torch."""
    if sys.platform.startswith("linux"):
        return os.path.exists("/dev/nvidiactl") or os.path.exists("/dev/dxg")
    if sys.platform == "darwin":
        return os.uname().machine == "arm64"
    return True


def list_devices() -> list[str]:
    import torch

    if torch.cuda.is_available():
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return ["mps"]
    return ["cpu"]


def resolve_device(device: str) -> str:
    """``auto`` becomes the first device of :func:`list_devices`; ``cuda`` becomes ``cuda:0``."""
    if device == "auto":
        return "cpu" if detect_devices() == ["cpu"] else list_devices()[0]
    if device == "cuda":
        return "cuda:0"
    return device


def physical_cores() -> int:
    """Physical cores (not hyper-threads) where the OS tells, else logical CPUs."""
    try:
        cores = set()
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            physical = core = None
            for line in f:
                if line.startswith("physical id"):
                    physical = line.split(":")[1].strip()
                elif line.startswith("core id"):
                    core = line.split(":")[1].strip()
                    cores.add((physical, core))
        if cores:
            return len(cores)
    except OSError:
        pass
    return os.cpu_count() or 1


@dataclass(frozen=True)
class ThreadPlan:
    """How one worker spreads its passes over the cores: ``compute`` forward passes at once (its compute
    threads, worker/worker.py), each on ``intra_op`` threads, and ``cores`` for a lone pass while the others
    are idle (an engine that can, worker/openvino_backend.py, runs a lone text on all of them)."""

    compute: int
    intra_op: int
    cores: int


def plan_threads(device: str, compute: int = 0, threads: int = 0, cpu_workers: int = 1) -> ThreadPlan:
    """The one place a worker's thread counts are decided, from ``--compute-threads`` and ``--threads`` (0: by
    the machine). The supervisor plans each CPU worker with it and passes the plan on as both flags; a worker
    started alone resolves its flags the same way, and a resolved plan resolves to itself.

    On a GPU: one compute thread. On the CPU, this worker's share of the physical cores (``cpu_workers``
    share them): a batch mix keeps every core busy (``compute`` x ``intra_op`` = the share, one pass per core
    by default), and a lone text may use them all (``cores``)."""
    if device != "cpu":
        return ThreadPlan(compute or 1, threads, threads)
    share = max(1, physical_cores() // max(1, cpu_workers))
    compute = compute or max(1, share // max(1, threads))
    intra_op = threads or max(1, share // compute)
    return ThreadPlan(compute, intra_op, max(share, intra_op))


if __name__ == "__main__":
    print(json.dumps({"devices": list_devices(), "physical_cores": physical_cores()}))
