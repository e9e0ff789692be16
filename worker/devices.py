"""Which devices this machine can run a worker on: one per CUDA GPU, else Apple MPS, else the CPU.

``python -m worker.devices`` prints them as JSON, so that the supervisor can plan workers without
importing torch itself.
"""

from __future__ import annotations

import json
import os


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
        from supervisor.supervisor import detect_devices  # no torch: a CPU-only machine never imports it here

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


if __name__ == "__main__":
    print(json.dumps({"devices": list_devices(), "physical_cores": physical_cores()}))
