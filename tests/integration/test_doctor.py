"""`embed-cluster doctor` as the desktop app runs it: a real interpreter, real imports, a real port, the real
device probe. One venv really lacks a dependency (pyzmq): it sees the main venv's packages through a
directory of links that leaves pyzmq out, so it is made in a second and offline."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, free_port

pytestmark = pytest.mark.slow  # starts real processes, like every integration module
LEFT_OUT = ("zmq", "pyzmq")  # the import package, its dist-info and its bundled libraries (pyzmq.libs)


def doctor(python: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("EMBED_")}
    full_env.update({"HF_HUB_OFFLINE": "1", **(env or {})})
    return subprocess.run([python, "-m", "supervisor.cli", "doctor", *args], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=300)


def checks(out: subprocess.CompletedProcess[str]) -> dict[str, dict[str, Any]]:
    report = json.loads(out.stdout)
    assert report["ok"] is (out.returncode == 0), out.stdout
    return {c["name"]: c for c in report["checks"]}


@pytest.fixture(scope="module")
def python_without_pyzmq(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("doctor")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / "venv")], check=True, timeout=120)
    visible = root / "site"
    visible.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if not entry.name.lower().startswith(LEFT_OUT):
            (visible / entry.name).symlink_to(entry)
    python = root / "venv" / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True, timeout=60).stdout.strip()
    # addsitedir, not a plain path line: the .pth files in there (the editable install's) are read too
    Path(purelib, "main-venv.pth").write_text(f"import site; site.addsitedir({str(visible)!r})\n")
    probe = subprocess.run([str(python), "-c", "import falcon, numpy, zmq"], capture_output=True, text=True,
                           cwd=root, timeout=120)
    assert probe.returncode != 0 and "zmq" in probe.stderr  # falcon and numpy import; zmq really is missing
    return str(python)


def test_all_pass_in_the_full_venv() -> None:
    out = doctor(sys.executable, "--json", "--port", str(free_port()))
    assert out.returncode == 0, out.stdout + out.stderr
    found = checks(out)
    assert set(found) == {"python", "dependencies", "device", "model", "port"}
    assert all(c["ok"] and c["code"] is None for c in found.values())
    assert "cpu" in found["device"]["details"]["devices"] and found["model"]["details"]["cached"] is True


def test_a_missing_dependency_is_named_with_the_command_that_installs_it(python_without_pyzmq: str) -> None:
    out = doctor(python_without_pyzmq, "--json", "--port", str(free_port()))
    assert out.returncode == 1, out.stdout + out.stderr
    found = checks(out)
    deps = found["dependencies"]
    assert not deps["ok"] and deps["code"] == "PYTHON_DEPS_MISSING"
    assert deps["details"]["missing"] == ["pyzmq"]
    assert deps["fix"].startswith(f"{python_without_pyzmq} -m pip install ") and "pyzmq" in deps["fix"]
    assert all(found[name]["ok"] for name in ("python", "device", "model", "port"))  # only that one fails
    human = doctor(python_without_pyzmq, "--port", str(free_port()))
    assert human.returncode == 1
    assert "FAIL  dependencies  PYTHON_DEPS_MISSING: missing: pyzmq" in human.stdout
    assert f"fix: {deps['fix']}" in human.stdout and "not ready" in human.stdout


def test_a_busy_port_and_a_model_that_cannot_be_had() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = doctor(sys.executable, "--json", "--port", str(port), "--model", "test-org/not-cached-anywhere")
    assert out.returncode == 1
    found = checks(out)
    assert found["port"]["code"] == "PORT_IN_USE" and str(port) in found["port"]["message"]
    assert found["model"]["code"] == "MODEL_UNAVAILABLE" and "HF_HUB_OFFLINE" in found["model"]["message"]
    assert found["python"]["ok"] and found["dependencies"]["ok"]
