"""The request policy from outside (http_front/request_policy.py; docs/security.md): real processes, real sockets.

- a real cluster on 127.0.0.1 as ``up`` starts by default (no key): a DNS-rebinding Host is refused, the
  loopback names are served; every JSON route of the route table refuses a body of another type with 415; an
  Origin of another page is refused; none of it reaches the workers (the /metrics text counter), and no text
  sent reaches the log;
- a front alone (no broker needed for what is checked) listening on the IPv6 loopback [::1], with
  ``--allowed-hosts`` and ``--allowed-origins``: requests over IPv6, the added name, CORS for the allowed origin.
"""

from __future__ import annotations

import os
import re
import secrets
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from http_front.routes import TABLE
from tests.conftest import Cluster, Process, cli, eventually, free_port, wait_http

pytestmark = pytest.mark.slow

JSON_ROUTES = sorted(route.path for route in TABLE if route.accepts == "json")  # a new JSON route is covered
MARK = "policy-" + secrets.token_hex(6)
UI = "http://127.0.0.1:5173"  # a local web UI, let in by --allowed-origins


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    c = Cluster("--workers", "1")
    try:
        yield c.wait_ready()
    finally:
        c.stop()


def texts_embedded(cluster_url: str) -> float:
    text = requests.get(cluster_url + "/metrics", timeout=30).text
    return sum(float(v) for v in re.findall(r"^embed_texts_total\S* (\S+)$", text, re.M))


def code(r: requests.Response) -> str | None:
    try:
        return r.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None


def test_a_rebinding_host_is_refused_and_the_loopback_names_served(cluster: Cluster) -> None:
    before = texts_embedded(cluster.url)
    for path, method in (("/embed", "POST"), ("/status.json", "GET"), ("/info", "GET"), ("/health", "GET")):
        r = requests.request(method, cluster.url + path, json={"texts": [f"{MARK} rebind"]}, timeout=30,
                             headers={"Host": f"attacker.example:{cluster.port}"})
        assert (r.status_code, code(r)) == (403, "HOST_NOT_ALLOWED"), (path, r.text)
        assert "workers" not in r.text
    assert texts_embedded(cluster.url) == before
    for host in (f"localhost:{cluster.port}", f"127.0.0.1:{cluster.port}", f"[::1]:{cluster.port}"):
        r = cluster.post("/embed", json={"texts": [f"{MARK} {host}"]}, headers={"Host": host})
        assert r.status_code == 200 and len(r.json()["vectors"][0]) == 384, (host, r.text)
    assert texts_embedded(cluster.url) == before + 3


@pytest.mark.parametrize("path", JSON_ROUTES)
def test_every_json_route_refuses_another_media_type(cluster: Cluster, path: str) -> None:
    before = texts_embedded(cluster.url)
    body = f'{{"texts": ["{MARK} 415"], "input": "{MARK} 415", "model": "all-MiniLM-L6-v2"}}'.encode()
    for content_type in (None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=b"):
        headers = {"Content-Type": content_type} if content_type else {}
        r = requests.post(cluster.url + path, data=body, headers=headers, timeout=30)
        assert (r.status_code, code(r)) == (415, "UNSUPPORTED_MEDIA_TYPE"), (path, content_type, r.text)
    assert texts_embedded(cluster.url) == before
    # as JSON, the same body reaches the route, which reads it (and says which fields it does not take)
    r = requests.post(cluster.url + path, data=body, headers={"Content-Type": "application/json; charset=utf-8"},
                      timeout=60)
    assert r.status_code == 200 or code(r) == "BAD_REQUEST", r.text


def test_a_foreign_origin_is_refused_and_nothing_logged(cluster: Cluster) -> None:
    before = texts_embedded(cluster.url)
    for origin in ("https://attacker.example", "null", f"http://localhost:{cluster.port + 1}"):
        r = cluster.post("/embed", json={"texts": [f"{MARK} origin"]}, headers={"Origin": origin})
        assert (r.status_code, code(r)) == (403, "ORIGIN_NOT_ALLOWED") and "Access-Control-Allow-Origin" not in \
            r.headers, (origin, r.text)
        preflight = requests.options(cluster.url + "/embed", headers={"Origin": origin,
                                                                     "Access-Control-Request-Method": "POST"},
                                     timeout=30)
        assert (preflight.status_code, code(preflight)) == (403, "ORIGIN_NOT_ALLOWED")
    assert texts_embedded(cluster.url) == before
    own = cluster.get("/status.json", headers={"Origin": cluster.url})  # the status page's own origin
    assert own.status_code == 200
    assert MARK not in cluster.log(tail=10_000_000), "a text sent is in the cluster's log at INFO"


def test_the_brokers_sockets_are_in_a_directory_of_this_user_alone(cluster: Cluster) -> None:
    """``up``'s broker, front and workers talk over ipc:// sockets in a private directory: another user of the
    machine can neither connect as a worker (and be given texts) nor as a front (and embed)."""
    listening = cluster.wait_event("broker_listening")["data"]
    for address in (listening["clients"], listening["workers"]):
        assert address.startswith("ipc://"), address
        directory = os.path.dirname(address[len("ipc://"):])
        info = os.stat(directory)
        assert stat.S_IMODE(info.st_mode) == 0o700 and info.st_uid == os.getuid(), (directory, oct(info.st_mode))


def test_a_broker_run_alone_on_tcp_says_who_can_reach_it(tmp_path: Path) -> None:
    tcp = f"tcp://127.0.0.1:{free_port()}"
    broker = Process(cli("broker", "--clients", tcp, "--workers-address", f"ipc://{tmp_path}/workers.ipc"))
    try:
        broker.wait_event("broker_listening", timeout=60)
        eventually(lambda: "may connect without a key" in broker.log(), broker.log, timeout=30)
        warned = [line for line in broker.log().splitlines() if "may connect without a key" in line]
        assert len(warned) == 1 and tcp in warned[0], warned  # the ipc:// address is not warned about
    finally:
        broker.stop()


def ipv6_loopback() -> str | None:
    """Why [::1] cannot be used here, or None when it can."""
    if not socket.has_ipv6:
        return "this Python has no IPv6"
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError as exc:
        return f"no IPv6 loopback on this machine: {exc}"
    return None


def test_a_front_on_the_ipv6_loopback_with_allowed_hosts_and_origins() -> None:
    why = ipv6_loopback()
    if why:
        pytest.skip(why)
    with socket.socket(socket.AF_INET6) as s:
        s.bind(("::1", 0))
        port = s.getsockname()[1]
    front = Process(cli("front", "--broker", "ipc:///nonexistent/no-broker.ipc", "--host", "::1", "--port",
                        str(port), "--allowed-hosts", "embed.box", "--allowed-origins", UI))
    url = f"http://[::1]:{port}"
    try:
        assert front.wait_event("front_listening", timeout=60)["data"]["url"] == url  # what clients are told
        wait_http(url + "/livez", lambda r: r.status_code == 200, timeout=60)  # Host: [::1]:PORT, over IPv6
        assert requests.get(url + "/livez", headers={"Host": "embed.box:8421"}, timeout=30).status_code == 200
        refused = requests.get(url + "/livez", headers={"Host": "attacker.example"}, timeout=30)
        assert (refused.status_code, code(refused)) == (403, "HOST_NOT_ALLOWED")
        preflight = requests.options(url + "/v1/embeddings", headers={
            "Origin": UI, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type"}, timeout=30)
        assert preflight.status_code == 204, preflight.text
        assert preflight.headers["Access-Control-Allow-Origin"] == UI
        assert preflight.headers["Access-Control-Allow-Methods"] == "POST"
        assert "content-type" in preflight.headers["Access-Control-Allow-Headers"].lower()
        assert int(preflight.headers["Access-Control-Max-Age"]) > 0
        for path in ("/v1/models", "/v1/models/x"):  # an answer, and an error (no worker here): both readable
            answer = requests.get(url + path, headers={"Origin": UI}, timeout=30)
            assert answer.headers["Access-Control-Allow-Origin"] == UI, (path, answer.status_code)
        other = requests.post(url + "/embed", json={"texts": ["x"]}, headers={"Origin": "http://evil.test"},
                              timeout=30)
        assert code(other) == "ORIGIN_NOT_ALLOWED" and "Access-Control-Allow-Origin" not in other.headers
    finally:
        front.stop()
