"""The live status page in a real headless browser, on a real cluster of two workers with an API key.

Debian's ``chromium``, driven by ``playwright-core`` from npm (tests/browser/status_page.mjs), opens /status:
no data shows before the key is given; then both workers ready, texts/s above zero under load, a worker
SIGKILLed shows restarting and then ready again; the worker table keeps its layout under load; full-page
screenshots at 1280x800 and at phone width (390 pixels).

Skipped, saying why, only when chromium, node or tests/browser/node_modules is missing; `.ci/run` installs them
and sets REQUIRE_BROWSER_TEST=1, under which a missing one fails the test instead. To refresh docs/status-page.md's
screenshot:
``STATUS_SCREENSHOT=docs/status-page.png python -m pytest tests/integration/test_status_page_browser.py``.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
import requests

from tests.conftest import ROOT, Cluster

pytestmark = pytest.mark.slow

BROWSER_DIR = ROOT / "tests" / "browser"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
KEY = "status-" + secrets.token_hex(16)


def missing_tools() -> str | None:
    if not Path(CHROMIUM).exists():
        return f"no chromium at {CHROMIUM} (apt-get install -y chromium)"
    if shutil.which("node") is None:
        return "no node on PATH (apt-get install -y nodejs)"
    if not (BROWSER_DIR / "node_modules" / "playwright-core").is_dir():
        return "playwright-core not installed (npm ci --prefix tests/browser)"
    return None


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


def test_status_page_in_a_real_browser(tmp_path: Path) -> None:
    why = missing_tools()
    if why:
        if os.environ.get("REQUIRE_BROWSER_TEST"):
            pytest.fail(f"the browser test must run here (REQUIRE_BROWSER_TEST is set): {why}")
        pytest.skip(why)
    cluster = Cluster("--workers", "2", env={"EMBED_API_KEY": KEY})
    try:
        listening = cluster.wait_event("front_listening", timeout=60)["data"]
        assert listening["status_url"] == f"http://127.0.0.1:{cluster.port}/status"
        cluster.wait_event("model_loaded", timeout=180)
        screenshot, phone = tmp_path / "status.png", tmp_path / "status-phone.png"
        env = {**os.environ, "STATUS_URL": listening["status_url"], "EMBED_API_KEY": KEY,
               "SCREENSHOT": str(screenshot), "PHONE_SCREENSHOT": str(phone), "CHROMIUM": CHROMIUM}
        run = subprocess.run(["node", "status_page.mjs"], cwd=BROWSER_DIR, env=env, capture_output=True,
                             text=True, timeout=300)
        lines = run.stdout.strip().splitlines()
        seen = json.loads(lines[-1]) if lines else {}
        assert run.returncode == 0, (f"browser step failed: {seen.get('failed')}: {seen.get('error')}\n"
                                     f"{run.stderr[-4000:]}\ncluster log:\n{cluster.log()}")
        steps = [s["step"] for s in seen["steps"]]
        assert steps[:3] == ["locked", "unlocked", "both ready"]
        locked = seen["steps"][0]
        assert locked["leaked"] == [] and locked["dataVisible"] is False and locked["rows"] == 0
        assert seen["rate"] > 0 and seen["sent"] > 0
        killed = seen["killed"]
        states = killed["states"]  # from the moment of the kill: ready (not yet seen), restarting, ready
        assert "restarting" in states and states[-1] == "ready" and "failed" not in states, killed
        assert killed["newPid"] != killed["pid"] and int(killed["restarts"]) >= 1
        assert "exited with code -9" in (killed["reason"] or ""), killed
        assert any("restarted" in e and killed["worker"] in e for e in seen["events"]), seen["events"]
        assert seen["consoleErrors"] == []
        # readable at 1280x800 and at phone width: nothing wider than the window; cells keep their widths
        assert seen["desktop"]["scrollWidth"] <= seen["desktop"]["clientWidth"], seen["desktop"]
        assert seen["phone"]["scrollWidth"] <= seen["phone"]["clientWidth"], seen["phone"]
        assert seen["stableWidths"] is True
        assert png_size(screenshot)[0] == 1280
        assert png_size(phone)[0] == 390
        # what the page showed is what the cluster did: the killed worker serves again from a new process
        health = requests.get(cluster.url + "/health", headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
        assert killed["newPid"] in [w["pid"] for w in health.json()["workers"]]
        target = os.environ.get("STATUS_SCREENSHOT")
        if target:
            shutil.copyfile(screenshot, ROOT / target)
    finally:
        cluster.stop()
