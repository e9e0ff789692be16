"""infinity-emb, the peer server bench/peers.py measures, in a virtual environment of its own.

It is never a project dependency: :func:`ensure_venv` creates the venv once (``python -m venv``, then pip with
:data:`REQUIREMENTS`: torch pinned to the CPU build, so that pip never pulls a CUDA one) and writes the
requirements beside it; a later run finds them equal and reuses it. :func:`argv` serves a local model
directory on the CPU with torch, with its vector cache off, so that every request is computed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

VERSION = "0.0.78"
REQUIREMENTS = ("torch==2.13.0", f"infinity-emb[server,torch]=={VERSION}", "transformers<5",
                "sentence-transformers<5")
DEFAULT_VENV = Path.home() / ".cache" / "embed-cluster" / "bench-venv"
MARKER = "embed-cluster-bench-requirements.txt"


def executable(venv: Path) -> Path:
    return venv / "bin" / "infinity_emb"


def installed(venv: Path) -> bool:
    """Whether ``venv`` holds infinity-emb installed with exactly :data:`REQUIREMENTS`."""
    marker = venv / MARKER
    return executable(venv).exists() and marker.exists() and marker.read_text(encoding="utf-8") == _pins()


def ensure_venv(venv: Path, log: Callable[[str], None]) -> Path:
    """The infinity_emb executable in ``venv``, installing it there first where it is missing or stale (a few
    minutes and about 1.5 GB, once)."""
    if installed(venv):
        return executable(venv)
    log(f"installing infinity-emb {VERSION} into {venv} (once; later runs reuse it) ...")
    venv.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    out = subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check",
                          *REQUIREMENTS], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"pip install into {venv} failed:\n{out.stderr[-3000:]}")
    (venv / MARKER).write_text(_pins(), encoding="utf-8")
    return executable(venv)


def _pins() -> str:
    return "\n".join(REQUIREMENTS) + "\n"


def argv(exe: Path, model_dir: str, dtype: str, port: int | str) -> list[str]:
    """``infinity_emb v2`` serving ``model_dir`` (a local directory) on the CPU in ``dtype`` (auto, bfloat16)."""
    return [str(exe), "v2", "--model-id", model_dir, "--engine", "torch", "--device", "cpu", "--dtype", dtype,
            "--host", "127.0.0.1", "--port", str(port), "--no-vector-disk-cache", "--log-level", "warning"]


def env(base: dict[str, str]) -> dict[str, str]:
    """``base`` without PYTHONPATH (the venv's own packages only), offline and without its usage telemetry."""
    out = {k: v for k, v in base.items() if k != "PYTHONPATH"}
    out.update({"HF_HUB_OFFLINE": "1", "DO_NOT_TRACK": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0"})
    out.setdefault("HOME", os.environ.get("HOME", "/tmp"))
    return out
