"""bench/peers.py's table and targets, built from synthetic figures (no process, no model): each ratio is the
one issue 19 names, each verdict follows its bound, and a peer not measured reads n/a, never pass."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from bench.load import OPENAI
from bench.peers import PEERS, select
from bench.peers_table import checks, render

SHAPES = ["1 client x 32 texts", "32 clients x 1 text", "8 clients x 1-64 texts"]


def server(name: str, rates: list[float], lone: float, pss: float, starts: list[float], cosine: float) -> dict:
    return {"name": name, "label": f"label of {name}", "shapes": dict(zip(SHAPES, rates, strict=True)),
            "lone_p50_ms": lone, "pss_loaded_mb": pss * 0.8, "pss_mb": pss, "start_s": starts, "min_cosine": cosine}


def report(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "machine": {"cpu": "Test CPU", "physical_cores": 2, "logical_cpus": 4, "flags": ["avx2", "amx_bf16"],
                    "native_bf16": True},
        "load_average_start": (0.1, 0, 0), "load_average_end": (0.2, 0, 0), "model": "m", "corpus": "c",
        "lone_texts": "l", "shapes": SHAPES,
        "limits": {"fp32": {"gflops": 300.0}, "bf16": {"gflops": 2000.0}, "gflop_per_text": 1.0,
                   "fp32_texts_per_s": 300.0, "bf16_texts_per_s": 2000.0},
        "rows": rows,
    }


@pytest.fixture
def full() -> dict[str, Any]:
    return report([
        server("seed", [40, 40, 40], 20.0, 1000.0, [4.0, 6.0, 5.0], 1.0),
        server("infinity-auto", [60, 50, 70], 15.0, 900.0, [10.0], 0.99999),
        server("infinity-bf16", [100, 90, 50], 12.0, 900.0, [10.0], 0.9999),
        {"name": "st-fp32", "label": "st fp32", "batch32": 100.0, "min_cosine": 1.0},
        {"name": "st-bf16", "label": "st bf16", "batch32": 200.0, "min_cosine": 0.9998},
        server("up", [260, 200, 180], 4.0, 500.0, [2.0, 3.0], 0.9996),
        server("up-torch", [220, 210, 330], 6.0, 700.0, [3.0], 0.9999),
    ])


def by_target(r: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["target"]: c for c in checks(r)}


def test_each_ratio_is_the_one_the_issue_names(full: dict[str, Any]) -> None:
    got = by_target(full)
    first, third = SHAPES[0], SHAPES[2]
    # infinity at its better dtype, per shape: bf16's 100 in the first, auto's 70 in the third
    assert got[f"{first}: x infinity-emb at its better dtype"]["values"]["up"] == pytest.approx(2.6)
    assert got[f"{third}: x infinity-emb at its better dtype"]["values"]["up"] == pytest.approx(180 / 70)
    # in-process at its best precision: bf16's 200
    assert got[f"{first}: x in-process sentence-transformers at its best precision"]["values"]["up"] == \
        pytest.approx(1.3)
    assert got[f"{first}: x the seed design"]["values"]["up"] == pytest.approx(6.5)
    assert got["lone text p50: x the seed design"]["values"]["up"] == pytest.approx(0.2)
    # the best other server is infinity-bf16's 12 ms, not the seed's 20
    assert got["lone text p50: x the best other server"]["values"]["up"] == pytest.approx(4 / 12)
    assert got["tree PSS, loaded: x the seed design"]["values"]["up"] == pytest.approx(0.5)
    assert got["tree PSS after the shapes: x the seed design"]["values"]["up"] == pytest.approx(0.5)
    assert got["warm start: x the seed design"]["values"]["up"] == pytest.approx(2.5 / 5.0)  # medians
    assert got["worst cosine to sentence-transformers fp32"]["values"]["up"] == pytest.approx(0.9996)
    # the other embed-cluster rows are shown beside, and judged by nobody
    assert got[f"{third}: x the seed design"]["values"]["up-torch"] == pytest.approx(330 / 40)


def test_each_verdict_follows_its_bound(full: dict[str, Any]) -> None:
    got = by_target(full)
    assert got[f"{SHAPES[0]}: x infinity-emb at its better dtype"]["verdict"] == "pass"  # 2.6 >= 2.5
    assert got[f"{SHAPES[1]}: x infinity-emb at its better dtype"]["verdict"] == "FAIL"  # 200 / 90
    assert got[f"{SHAPES[2]}: x infinity-emb at its better dtype"]["verdict"] == "pass"  # 180 / 70 = 2.57
    assert got["lone text p50: x the seed design"]["verdict"] == "pass"
    assert got["warm start: x the seed design"]["verdict"] == "pass"  # 0.5 <= 0.5: the bound itself passes
    slower = copy.deepcopy(full)
    up = next(row for row in slower["rows"] if row["name"] == "up")
    up.update(lone_p50_ms=9.0, pss_mb=700.0, min_cosine=0.999)
    got = by_target(slower)
    assert got["tree PSS, loaded: x the seed design"]["verdict"] == "pass"  # 400 of 800
    assert got["lone text p50: x the seed design"]["verdict"] == "FAIL"
    assert got["tree PSS after the shapes: x the seed design"]["verdict"] == "FAIL"
    assert got["worst cosine to sentence-transformers fp32"]["verdict"] == "FAIL"


def test_a_peer_not_measured_reads_n_a_and_its_note_is_printed(full: dict[str, Any]) -> None:
    partial = copy.deepcopy(full)
    partial["rows"] = [row for row in partial["rows"] if not row["name"].startswith("infinity")]
    partial["rows"].insert(1, {"name": "infinity-bf16", "label": "inf bf16", "note": "skipped: no native bf16"})
    got = by_target(partial)
    assert {got[f"{s}: x infinity-emb at its better dtype"]["verdict"] for s in SHAPES} == {"n/a"}
    assert got["lone text p50: x the best other server"]["values"]["up"] == pytest.approx(0.2)  # the seed's
    table = render(partial)
    assert "- inf bf16: skipped: no native bf16" in table
    without_up = copy.deepcopy(full)
    without_up["rows"] = [row for row in without_up["rows"] if row["name"] != "up"]
    assert {c["verdict"] for c in checks(without_up)} == {"n/a"}


def test_the_table_has_a_row_per_peer_and_a_column_per_figure(full: dict[str, Any]) -> None:
    table = render(full)
    lines = table.splitlines()
    assert "flags: avx2 amx_bf16; native bf16: yes" in lines
    header = next(line for line in lines if line.startswith("| texts/s |"))
    assert [cell.strip() for cell in header.strip("|").split("|")][1:] == \
        [*SHAPES, "lone text p50 ms", "PSS MB, loaded", "PSS MB, after the shapes", "warm start s",
         "worst cosine to ST fp32"]
    up = next(line for line in lines if line.startswith("| label of up |"))
    assert [cell.strip() for cell in up.strip("|").split("|")][1:] == \
        ["260.0", "200.0", "180.0", "4.0", "400", "500", "2.50", "0.999600"]
    st = next(line for line in lines if line.startswith("| st bf16 |"))
    assert [cell.strip() for cell in st.strip("|").split("|")][1:4] == ["200.0", "", ""]
    fraction = next(line for line in lines if line.startswith("| label of up-torch |") and "0.1" in line)
    assert fraction.split("|")[2].strip() == "0.110"  # 220 of the 2,000 texts/s bf16 limit


def test_peers_are_chosen_by_name_or_group_in_table_order() -> None:
    assert [p.name for p in select("up,seed")] == ["seed", "up"]
    assert [p.name for p in select("infinity,st-fp32")] == ["infinity-auto", "infinity-bf16", "st-fp32"]
    assert select("all") == list(PEERS)
    with pytest.raises(ValueError, match="nope"):
        select("seed,nope")


def test_openai_answers_are_read_in_index_order() -> None:
    answer = {"data": [{"index": 1, "embedding": [0.0, 1.0]}, {"index": 0, "embedding": [1.0, 0.0]}]}
    assert OPENAI.vectors(answer) == [[1.0, 0.0], [0.0, 1.0]]
    assert OPENAI.request(["a"])["input"] == ["a"]
