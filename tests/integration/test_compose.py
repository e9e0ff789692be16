"""docker-compose.yml: valid compose, shaped to scale, and its services' commands really work.

No docker engine runs here, so the services' commands run as native processes: the same argv and environment
a container would get, in compose's dependency order, with the container's addresses and volumes mapped to
loopback ports and temporary directories. Validity: ``docker compose config`` (or ``docker-compose config``)
where a compose client is installed, and always the Compose Specification's JSON schema.
``compose_spec.json`` beside this file is that schema as docker-compose 1.29.2 ships it
(compose/config/compose_spec.json, Apache-2.0); it predates top-level ``name:``, which the file therefore omits.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import yaml

from tests.conftest import ROOT, Process, cosine_rows, eventually, free_port, sample_texts, wait_http

pytestmark = pytest.mark.slow  # starts real processes, like every integration module
COMPOSE_FILES = ("docker-compose.yml", "docker-compose.gpu.yml")
API_KEY = "compose-test-key"
HTTP_PORT, LAN_PORT = "8421", "8424"  # the ports the compose file uses inside the containers
SCALE = {"worker": 2}  # docker compose up --scale worker=2


def load(name: str) -> dict[str, Any]:
    return yaml.safe_load((ROOT / name).read_text())


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's variable substitution: $$, ${VAR}, ${VAR:-default}, ${VAR:?error}."""

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.group(1), match.group(2), match.group(3)
        value = env.get(name, "")
        if op == ":?" and not value:
            pytest.fail(f"compose needs {name}: {arg}")
        return value or (arg if op == ":-" else "")

    return re.sub(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:[-?])([^}]*))?\}", one, text)


def compose_client() -> list[str] | None:
    for argv in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(argv[0]) and subprocess.run([*argv, "version"], capture_output=True,
                                                    timeout=60).returncode == 0:
            return argv
    return None


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_compose_files_match_the_compose_schema(name: str) -> None:
    import jsonschema_rs

    schema = json.loads((Path(__file__).parent / "compose_spec.json").read_text())
    errors = [f"{'/'.join(map(str, e.instance_path))}: {e.message}"
              for e in jsonschema_rs.validator_for(schema).iter_errors(load(name))]
    assert errors == []


def test_compose_client_accepts_the_files() -> None:
    client = compose_client()
    if client is None:
        pytest.skip("no compose client (docker compose or docker-compose) here; the schema test still ran")
    env = {**os.environ, "EMBED_API_KEY": API_KEY}
    for files in (COMPOSE_FILES[:1], COMPOSE_FILES):
        flags = [arg for name in files for arg in ("-f", str(ROOT / name))]
        done = subprocess.run([*client, *flags, "config", "-q"], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stderr
    missing = subprocess.run([*client, "-f", str(ROOT / COMPOSE_FILES[0]), "config", "-q"], cwd=ROOT,
                             env={k: v for k, v in env.items() if k != "EMBED_API_KEY"}, capture_output=True,
                             text=True, timeout=120)
    assert missing.returncode != 0 and "EMBED_API_KEY" in missing.stderr  # the front is never left open


def test_compose_shape_publishes_http_checks_health_and_lets_workers_scale() -> None:
    from supervisor.cli import EnvArgs, build_parser

    services = load(COMPOSE_FILES[0])["services"]
    cluster, worker = services["cluster"], services["worker"]
    assert cluster["ports"] == [f"{HTTP_PORT}:{HTTP_PORT}"]
    assert cluster["command"][:2] == ["embed-cluster", "up"] and "/health" in " ".join(cluster["healthcheck"]["test"])
    # a replica of `worker` must not claim anything only one container can have
    assert not {"container_name", "ports", "hostname"} & set(worker)
    assert worker["command"][:2] == ["embed-cluster", "worker"] and "--key" in worker["command"]
    volumes = set(load(COMPOSE_FILES[0])["volumes"])
    assert volumes == {"model-cache", "keys"}
    for service in (cluster, worker):
        assert {v.split(":")[0] for v in service["volumes"]} == volumes
    build_parser()  # every EMBED_* variable the file sets must be a known setting (else the CLI exits)
    for name, service in services.items():
        unknown = {k for k in service.get("environment", {}) if k.startswith("EMBED_")} - EnvArgs.known
        assert not unknown, f"{name}: {unknown}"


class Native:
    """Runs compose services as local processes: container addresses and volumes mapped to this machine."""

    def __init__(self, root: Path) -> None:
        self.http_port, self.lan_port = free_port(), free_port()
        self.keys, self.cache = root / "keys", root / "cache"
        self.cache.mkdir()
        self.mapping = [
            ("tcp://cluster:", "tcp://127.0.0.1:"),
            (f"0.0.0.0:{LAN_PORT}", f"127.0.0.1:{self.lan_port}"),
            (f"127.0.0.1:{LAN_PORT}", f"127.0.0.1:{self.lan_port}"),
            (f"127.0.0.1:{HTTP_PORT}", f"127.0.0.1:{self.http_port}"),
            ("0.0.0.0", "127.0.0.1"),
            ("/keys", str(self.keys)),
            ("/cache", str(self.cache)),
        ]
        self.env = {"EMBED_API_KEY": API_KEY}
        self.url = f"http://127.0.0.1:{self.http_port}"

    def arg(self, value: str) -> str:
        value = interpolate(value, self.env)
        if value == HTTP_PORT:
            return str(self.http_port)
        for old, new in self.mapping:
            value = value.replace(old, new)
        return value

    def argv(self, argv: list[str]) -> list[str]:
        return [self.arg(a) for a in argv]

    def environment(self, service: dict[str, Any]) -> dict[str, str]:
        env = {k: self.arg(str(v)) for k, v in (service.get("environment") or {}).items()}
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"  # embed-cluster
        # in the image the vector cache lies in the /cache volume (the Dockerfile's XDG_CACHE_HOME): a cold one
        # of the test's own, not this machine's, whose earlier runs would answer the texts without any worker
        env.setdefault("EMBED_CACHE", str(self.cache / "embed-cluster" / "vectors.sqlite"))
        return env


def startup_order(services: dict[str, Any]) -> list[str]:
    order: list[str] = []
    while len(order) < len(services):
        ready = [n for n, s in services.items() if n not in order and set(s.get("depends_on") or {}) <= set(order)]
        assert ready, f"a dependency cycle in {set(services) - set(order)}"
        order += sorted(ready)
    return order


def wait_healthy(name: str, check: list[str], env: dict[str, str], process: Process, timeout: float) -> None:
    """Run the service's healthcheck until it passes; fails loudly, with its log, on timeout or once it exited."""
    def healthy() -> bool:
        if not subprocess.run(check, env={**os.environ, **env}, capture_output=True, timeout=60).returncode:
            return True
        if process.proc.poll() is not None:
            pytest.fail(f"{name} exited before it became healthy:\n{process.log()}")
        return False

    eventually(healthy, lambda: f"{name} healthy:\n{process.log()}", timeout=timeout, interval=1)


@pytest.fixture(scope="module")
def native_compose(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Native, list[Process]]]:
    """Every service of docker-compose.yml started as `docker compose up --scale worker=2` would, natively:
    one-shot services (others wait for them to complete) run to the end first; the rest start together, and
    the fixture waits until each health check passes."""
    services = load(COMPOSE_FILES[0])["services"]
    native = Native(tmp_path_factory.mktemp("compose"))
    one_shot = {dep for s in services.values() for dep, cond in (s.get("depends_on") or {}).items()
                if cond["condition"] == "service_completed_successfully"}
    started: list[Process] = []
    health: list[tuple[str, list[str], dict[str, str], Process]] = []
    try:
        for name in startup_order(services):
            service = services[name]
            argv, env = native.argv(service["command"]), native.environment(service)
            if name in one_shot:
                done = subprocess.run(argv, cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True,
                                      timeout=120)
                assert done.returncode == 0, f"{name}: {done.stderr}"
                continue
            for _ in range(SCALE.get(name, 1)):
                started.append(Process(argv, env))
            if "healthcheck" in service:
                health.append((name, native.argv(service["healthcheck"]["test"][1:]), env, started[-1]))
        deadline = time.monotonic() + 300
        for name, check, env, process in health:  # test: ["CMD", *argv]
            wait_healthy(name, check, env, process, timeout=max(0.0, deadline - time.monotonic()))
        yield native, started
    finally:
        for process in reversed(started):
            process.stop(timeout=60)


def test_compose_services_run_as_native_processes_and_embed(native_compose, reference_model) -> None:
    native, processes = native_compose
    auth = {"Authorization": f"Bearer {API_KEY}"}
    health = wait_http(native.url + "/health", lambda r: r.status_code == 401, timeout=10)
    assert health.json()["error"]["code"] == "UNAUTHORIZED"  # EMBED_API_KEY reached the front
    def joined() -> list[dict] | None:  # the cluster's own worker and the two `worker` replicas
        workers = requests.get(native.url + "/health", headers=auth, timeout=30).json()["workers"]
        remote = sum(1 for w in workers if w["remote"])
        return workers if remote == SCALE["worker"] and remote < len(workers) else None

    workers = eventually(joined, "the local worker and both replicas serve", timeout=300, interval=0.5)
    # `up` runs one local CPU worker (auto); the replicas come over CurveZMQ
    assert sum(w["remote"] for w in workers) == SCALE["worker"] and not all(w["remote"] for w in workers), workers
    texts = [text[:150] for text in sample_texts(64 * len(workers), seed=11)]  # a job per idle worker
    r = requests.post(native.url + "/embed", json={"texts": texts}, headers=auth, timeout=300)
    assert r.status_code == 200, r.text
    expected = reference_model.encode(texts, normalize_embeddings=True)
    assert cosine_rows(np.array(r.json()["vectors"]), expected).min() > 0.999
    served = requests.get(native.url + "/health", headers=auth, timeout=30).json()["workers"]
    assert any(w["remote"] and w["served_texts"] > 0 for w in served), served  # through CurveZMQ
    cluster = processes[0]
    for process in reversed(processes):
        process.stop(timeout=60)
    assert cluster.proc.returncode == 0, cluster.log()
