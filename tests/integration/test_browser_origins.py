"""Web pages against a real cluster on loopback with no API key (a laptop), in a real headless browser.

Debian's ``chromium``, driven by ``playwright-core`` (tests/browser/cross_origin.mjs), opens a page served by an
http server of this test on another loopback port (another origin), which tries every way a page has to make
the cluster embed: fetch with text/plain (no preflight), with mode no-cors, with JSON, a text/plain and an
urlencoded form posted into a frame; and to read /info and /status.json. The cluster embeds nothing (its
/metrics text counter does not move; its refusals are counted) and the page reads nothing. A page of a name
the browser resolves to 127.0.0.1 on the cluster's own port (what a DNS-rebinding page is) is refused by its
Host. The same page served from the origin named by ``--allowed-origins`` embeds and reads its vectors.

Skipped, saying why, only when chromium, node or tests/browser/node_modules is missing (``.ci/run`` installs
them and sets REQUIRE_BROWSER_TEST=1, under which a missing one fails the test instead).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.conftest import Cluster
from tests.integration.test_status_page_browser import BROWSER_DIR, CHROMIUM, missing_tools

pytestmark = pytest.mark.slow

MARK = "origin-test-" + secrets.token_hex(6)  # in every text a page sends: the cluster's log must not hold it
REBIND_HOST = "rebind.attacker.test"
PAGE = b"<!doctype html><html><head><meta charset='utf-8'><title>some page</title></head><body></body></html>"


class PageHandler(BaseHTTPRequestHandler):
    """An ordinary web page: what any site the user visits could serve."""

    def do_GET(self) -> None:  # http.server calls it by this name
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(PAGE)))
        self.end_headers()
        self.wfile.write(PAGE)

    def log_message(self, format: str, *args: object) -> None:
        pass


def serve_page() -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), PageHandler)
    threading.Thread(target=server.serve_forever, name="page-server", daemon=True).start()
    return server


@pytest.fixture(scope="module")
def pages() -> Iterator[tuple[str, str]]:
    """Two origins of the same page: the one the cluster is told to let in, and a foreign one."""
    allowed, foreign = serve_page(), serve_page()
    try:
        yield (f"http://127.0.0.1:{allowed.server_address[1]}", f"http://127.0.0.1:{foreign.server_address[1]}")
    finally:
        for server in (allowed, foreign):
            server.shutdown()
            server.server_close()


def metric(cluster: Cluster, line: str) -> float:
    """The sum of the samples of /metrics whose line starts with ``line``."""
    text = cluster.get("/metrics").text
    return sum(float(v) for v in re.findall(rf"^{re.escape(line)}\S* (\S+)$", text, re.M))


def texts_embedded(cluster: Cluster) -> float:
    return metric(cluster, "embed_texts_total")


def refused(cluster: Cluster, code: str) -> float:
    return metric(cluster, f'embed_http_requests_total{{code="{code}"')


def test_a_web_page_cannot_drive_the_cluster_unless_its_origin_is_allowed(pages: tuple[str, str]) -> None:
    why = missing_tools()
    if why:
        if os.environ.get("REQUIRE_BROWSER_TEST"):
            pytest.fail(f"the browser test must run here (REQUIRE_BROWSER_TEST is set): {why}")
        pytest.skip(why)
    allowed, foreign = pages
    cluster = Cluster("--workers", "1", "--allowed-origins", allowed)
    try:
        cluster.wait_ready()
        before = texts_embedded(cluster), refused(cluster, "ORIGIN_NOT_ALLOWED"), refused(cluster, "HOST_NOT_ALLOWED")
        env = {**os.environ, "CLUSTER": cluster.url, "FOREIGN": foreign + "/page.html",
               "ALLOWED": allowed + "/page.html", "REBIND_HOST": REBIND_HOST, "MARK": MARK, "CHROMIUM": CHROMIUM}
        run = subprocess.run(["node", "cross_origin.mjs"], cwd=BROWSER_DIR, env=env, capture_output=True, text=True,
                             timeout=300)
        lines = run.stdout.strip().splitlines()
        seen = json.loads(lines[-1]) if lines else {}
        assert run.returncode == 0, (f"browser step failed: {seen.get('failed')}: {seen.get('error')}\n"
                                     f"{run.stderr[-4000:]}\ncluster log:\n{cluster.log()}")

        # the foreign page: nothing embedded, nothing read
        attempts = seen["foreign"]
        assert set(attempts) == {"text_plain", "no_cors", "json", "info", "status_json", "form_text_plain",
                                 "form_urlencoded"}
        for name, outcome in attempts.items():
            if name == "no_cors":  # an opaque answer: no status, no body
                assert outcome["type"] == "opaque" and outcome["status"] == 0 and outcome["text"] == "", outcome
            else:
                assert outcome["read"] is False, (name, outcome)
        # the rebinding page: same-origin with the cluster, so it reads what it is answered: the refusal only
        assert seen["rebind_landing"]["status"] == 403 and "HOST_NOT_ALLOWED" in seen["rebind_landing"]["text"]
        for name, outcome in seen["rebind"].items():
            assert outcome["status"] == 403 and json.loads(outcome["text"])["error"]["code"] == "HOST_NOT_ALLOWED", \
                (name, outcome)
            assert "worker" not in outcome["text"] and "model" not in outcome["text"]
        # the allowed page: embeds and reads its vectors; a wrong body type it is told about (it may read that)
        mine = seen["allowed"]
        assert (mine["status"], mine["rows"], mine["dim"]) == (200, 2, 384), mine
        assert mine["plain"]["status"] == 415 and "UNSUPPORTED_MEDIA_TYPE" in mine["plain"]["text"]

        after = texts_embedded(cluster), refused(cluster, "ORIGIN_NOT_ALLOWED"), refused(cluster, "HOST_NOT_ALLOWED")
        print(f"\nfrom the pages: {after[1] - before[1]:.0f} requests refused by their Origin, "
              f"{after[2] - before[2]:.0f} by their Host; {after[0] - before[0]:.0f} texts embedded")
        assert after[0] - before[0] == 2, "only the allowed page's two texts were embedded"
        # the foreign page's attempts reached the cluster and were refused there (the preflight of the JSON fetch
        # is the one refused for it); the rebinding page's three requests too
        assert after[1] - before[1] >= 6, (before, after)
        assert after[2] - before[2] >= 3, (before, after)  # and the favicon the browser may ask for
        assert MARK not in cluster.log(tail=10_000_000), "a text sent reached the cluster's log"
    finally:
        cluster.stop()
