"""The table bench/peers.py prints: every server and in-process reference in one markdown table, each as a
fraction of this machine's bf16 limit, and issue 19's targets for the default ``embed-cluster up``, each with
pass or fail.

A pure function of the run's figures (the JSON bench/peers.py writes), so that it can be rebuilt from a saved
run and tested without a process. A row is a dict: ``name``, ``label``, ``shapes`` ({shape name: texts/s}, for
servers), ``batch32`` (texts/s in batches of 32, for in-process references), ``lone_p50_ms``,
``pss_loaded_mb`` (the tree's PSS with the model loaded and the lone texts served), ``pss_mb`` (after the shapes),
``start_s`` (a list, one figure a timed start), ``min_cosine`` and ``note``; a figure not measured is None or
absent.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

OURS = "up"  # the row the targets are for: the default `embed-cluster up`
INFINITY = ("infinity-auto", "infinity-bf16")
IN_PROCESS = ("st-fp32", "st-bf16")
SEED = "seed"
OTHER_SERVERS = (SEED, *INFINITY)  # "the best other server" of the lone-text target


@dataclass(frozen=True)
class Target:
    """One of issue 19's targets: ``ratio(rows, name)`` for the row ``name`` (None: a figure is missing)."""

    text: str
    ratio: Callable[[dict[str, dict[str, Any]], str], float | None]
    at_least: bool  # True: the ratio must be >= bound; False: <= bound
    bound: float

    def verdict(self, value: float | None) -> str:
        if value is None:
            return "n/a"
        return "pass" if (value >= self.bound if self.at_least else value <= self.bound) else "FAIL"

    @property
    def wanted(self) -> str:
        return f"{'>=' if self.at_least else '<='} {self.bound:g}"


def _div(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _best(values: list[float | None], pick: Callable[[list[float]], float]) -> float | None:
    known = [v for v in values if v is not None]
    return pick(known) if known else None


def rate(row: dict[str, Any] | None, shape: str) -> float | None:
    return None if row is None else (row.get("shapes") or {}).get(shape)


def median_start(row: dict[str, Any] | None) -> float | None:
    starts = (row or {}).get("start_s") or []
    return statistics.median(starts) if starts else None


def targets(shapes: list[str]) -> list[Target]:
    """Issue 19's targets, the throughput ones once for each shape."""
    out: list[Target] = []
    for shape in shapes:
        out += [
            Target(f"{shape}: x infinity-emb at its better dtype",
                   lambda rows, name, s=shape: _div(rate(rows.get(name), s),
                                                    _best([rate(rows.get(p), s) for p in INFINITY], max)),
                   True, 2.5),
            Target(f"{shape}: x in-process sentence-transformers at its best precision",
                   lambda rows, name, s=shape: _div(rate(rows.get(name), s),
                                                    _best([(rows.get(p) or {}).get("batch32") for p in IN_PROCESS],
                                                          max)),
                   True, 1.2),
            Target(f"{shape}: x the seed design",
                   lambda rows, name, s=shape: _div(rate(rows.get(name), s), rate(rows.get(SEED), s)), True, 4.0),
        ]

    def lone(rows: dict[str, dict[str, Any]], name: str) -> float | None:
        return (rows.get(name) or {}).get("lone_p50_ms")

    def pss(rows: dict[str, dict[str, Any]], name: str, key: str) -> float | None:
        return (rows.get(name) or {}).get(key)

    out += [
        Target("lone text p50: x the seed design", lambda rows, name: _div(lone(rows, name), lone(rows, SEED)),
               False, 0.4),
        Target("lone text p50: x the best other server",
               lambda rows, name: _div(lone(rows, name), _best([lone(rows, p) for p in OTHER_SERVERS], min)),
               False, 0.4),
        Target("tree PSS, loaded: x the seed design", lambda rows, name: _div(pss(rows, name, "pss_loaded_mb"),
                                                                              pss(rows, SEED, "pss_loaded_mb")),
               False, 0.6),
        Target("tree PSS after the shapes: x the seed design",
               lambda rows, name: _div(pss(rows, name, "pss_mb"), pss(rows, SEED, "pss_mb")), False, 0.6),
        Target("warm start: x the seed design",
               lambda rows, name: _div(median_start(rows.get(name)), median_start(rows.get(SEED))), False, 0.5),
        Target("worst cosine to sentence-transformers fp32",
               lambda rows, name: (rows.get(name) or {}).get("min_cosine"), True, 0.9995),
    ]
    return out


def checks(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target's ratio for the default ``up`` (and, for comparison, every other embed-cluster row)."""
    rows = {row["name"]: row for row in report["rows"]}
    ours = [name for name in rows if name == OURS or name.startswith(OURS + "-")]
    out = []
    for target in targets(report["shapes"]):
        values = {name: target.ratio(rows, name) for name in ours}
        out.append({"target": target.text, "wanted": target.wanted, "values": values,
                    "verdict": target.verdict(values.get(OURS))})
    return out


def _cell(value: float | None, digits: int = 1) -> str:
    return "" if value is None else f"{value:,.{digits}f}"


def _flags(machine: dict[str, Any]) -> str:
    bf16 = "yes" if machine.get("native_bf16") else "no (bf16 rows are emulated, slow, or skipped)"
    return f"flags: {' '.join(machine.get('flags') or []) or 'none of note'}; native bf16: {bf16}"


def render(report: dict[str, Any]) -> str:
    m, limits, shapes = report["machine"], report["limits"], report["shapes"]
    lines = [
        f"CPU: {m['cpu']}, {m['physical_cores']} physical cores, {m['logical_cpus']} logical CPUs",
        _flags(m),
        f"load average {report['load_average_start'][0]:.2f} at start, {report['load_average_end'][0]:.2f} at end "
        "(above ~0.5 at start: other work shared the CPUs)",
        f"model: {report['model']}; texts: {report['corpus']}; lone text: {report['lone_texts']}",
        f"matmul peaks in this run: fp32 {limits['fp32']['gflops']:,.0f} GFLOP/s, bf16 "
        f"{limits['bf16']['gflops']:,.0f} GFLOP/s; the model's forward pass {limits['gflop_per_text']:.3f} GFLOP a "
        f"text: limits {limits['fp32_texts_per_s']:,.0f} texts/s fp32, {limits['bf16_texts_per_s']:,.0f} texts/s bf16",
        "",
        "| texts/s | " + " | ".join(shapes) + " | lone text p50 ms | PSS MB, loaded | PSS MB, after the shapes "
        "| warm start s | worst cosine to ST fp32 |",
        "|---|" + "---|" * (len(shapes) + 5),
    ]
    notes = []
    for row in report["rows"]:
        if "batch32" in row:
            cells = [_cell(row.get("batch32"))] + [""] * (len(shapes) - 1)
        else:
            cells = [_cell(rate(row, s)) for s in shapes]
        cells += [_cell(row.get("lone_p50_ms")), _cell(row.get("pss_loaded_mb"), 0), _cell(row.get("pss_mb"), 0),
                  _cell(median_start(row), 2),
                  _cell(row.get("min_cosine"), 6)]
        lines.append(f"| {row['label']} | " + " | ".join(cells) + " |")
        if row.get("engine"):
            notes.append(f"- {row['label']} served on: " + ", ".join(
                f"{k} {'/'.join(map(str, v)) if isinstance(v, list) else v}" for k, v in row["engine"].items()))
        if row.get("note"):
            notes.append(f"- {row['label']}: {row['note']}")
    lines += ["", "In-process rows: `SentenceTransformer.encode(texts, batch_size=32)`, no server; shown under the "
                  "first shape, the better of a pass before the servers and one after. PSS: the server's whole "
                  "process tree, loaded (the lone texts served) and after the shapes. Warm start: the median of the "
                  "timed starts, to the first 200 from /health.", *notes]
    bf16_limit = limits["bf16_texts_per_s"]
    lines += ["", f"| fraction of the bf16 limit ({bf16_limit:,.0f} texts/s) | " + " | ".join(shapes) + " |",
              "|---|" + "---|" * len(shapes)]
    for row in report["rows"]:
        if "batch32" in row:
            figures = [row.get("batch32")] + [None] * (len(shapes) - 1)
        else:
            figures = [rate(row, s) for s in shapes]
        lines.append(f"| {row['label']} | " + " | ".join(_cell(_div(f, bf16_limit), 3) for f in figures) + " |")
    result = checks(report)
    others = [name for name in (result[0]["values"] if result else {}) if name != OURS]
    labels = {row["name"]: row["label"] for row in report["rows"]}
    lines += ["", "| target (default `up`) | wanted | `up` | verdict |" + "".join(f" {labels[n]} |" for n in others),
              "|---|---|---|---|" + "---|" * len(others)]
    for check in result:
        values = check["values"]
        digits = 6 if "cosine" in check["target"] else 2
        lines.append(f"| {check['target']} | {check['wanted']} | {_cell(values.get(OURS), digits)} | "
                     f"{check['verdict']} |" + "".join(f" {_cell(values.get(n), digits)} |" for n in others))
    return "\n".join(lines)
