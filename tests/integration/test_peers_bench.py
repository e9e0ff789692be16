"""bench/peers.py through the real path, in its smoke size: the seed design and the default ``up`` started,
measured in every shape, and the table and targets built from what they served. It installs nothing
(infinity-emb's venv is the full run's), and asserts that each figure was measured, never how fast."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import procs

pytestmark = pytest.mark.slow


def test_a_quick_run_measures_the_seed_and_up_side_by_side(tmp_path: Path) -> None:
    out = tmp_path / "peers.json"
    run = subprocess.run([sys.executable, "bench/peers.py", "--quick", "--peers", "seed,up", "--out", str(out)],
                         cwd=procs.ROOT, env=procs.child_env(), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(out.read_text(encoding="utf-8"))
    rows = {row["name"]: row for row in report["rows"]}
    assert list(rows) == ["seed", "up"]
    for row in rows.values():
        assert "note" not in row, row["note"]
        assert set(row["shapes"]) == set(report["shapes"]) and min(row["shapes"].values()) > 0
        assert row["lone_p50_ms"] > 0 and row["pss_loaded_mb"] > 0 and row["pss_mb"] > 0 and len(row["start_s"]) == 1
    # no st-fp32 row: the seed's own vectors (sentence-transformers fp32) are the reference
    assert rows["seed"]["min_cosine"] == pytest.approx(1.0, abs=1e-6)
    assert rows["up"]["min_cosine"] > 0.999
    assert report["limits"]["fp32"]["gflops"] > 0 and report["limits"]["bf16"]["gflops"] > 0
    assert report["machine"]["native_bf16"] in (True, False)
    table = report["table"]
    assert table in run.stdout and "| **embed-cluster `up`** |" in table
    verdicts = {line.split("|")[1].strip(): line.split("|")[4].strip()
                for line in table.splitlines() if line.startswith("| ") and " x the seed design |" in line}
    assert len(verdicts) == len(report["shapes"]) + 4 and set(verdicts.values()) <= {"pass", "FAIL"}
