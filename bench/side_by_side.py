"""Two or more ``embed-cluster up`` trees measured side by side in one run, so the machine's drift falls on all of
them: bench/streams.py (two ways of one engine) and bench/ab.py (two revisions of the code) print this.

Every tree runs at once. Each measurement goes to one tree and then the next (the order turned every round):
the p50 of a lone long text (bench/peers.py's lone-text row), texts/s in the three shapes of bench/load.py for
``rounds`` rounds, and each tree's PSS loaded, after the shapes and after a few idle seconds (the idle tidy
gives an engine's buffers back).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import procs
from bench.load import EMBED, SHAPES, interleaved_lone, run_shape
from bench.peers import long_texts
from bench.sidecar import tree_pss

IDLE_SECONDS = 3.0  # past the worker's idle tidy (worker/worker.py IDLE_TIDY)


@dataclass(frozen=True)
class Tree:
    name: str
    args: list[str] = field(default_factory=list)  # added to `up`'s
    root: Path = procs.ROOT  # the checkout whose code it runs


@dataclass
class Measured:
    lone_ms: float
    rates: dict[str, list[float]]  # shape name -> texts/s, one a round
    memory: dict[str, float]  # loaded, after, idle -> PSS MB
    health: dict[str, Any]  # /health at the end


def pss(server: procs.Server) -> float:
    """The whole tree's PSS, MB."""
    return round(sum(tree_pss(server.proc.pid).values()), 1)


def measure(trees: list[Tree], model: str, texts: list[str], rounds: int, light: int) -> dict[str, Measured]:
    servers: dict[str, procs.Server] = {}
    with tempfile.TemporaryDirectory(prefix="bench-side-by-side-") as tmp:
        try:
            for tree in trees:
                log_dir = Path(tmp) / tree.name
                log_dir.mkdir()
                servers[tree.name] = procs.start_cluster(model, ["--request-timeout", "300", *tree.args], log_dir,
                                                         root=tree.root)
            targets = {name: (server.port, EMBED) for name, server in servers.items()}
            lone = interleaved_lone(targets, long_texts(light), light)
            memory = {name: {"loaded": pss(server)} for name, server in servers.items()}
            rates: dict[str, dict[str, list[float]]] = {name: {s.name: [] for s in SHAPES} for name in servers}
            for round_ in range(rounds):
                for shape in SHAPES:
                    order = list(servers) if round_ % 2 == 0 else list(reversed(servers))
                    for name in order:
                        rates[name][shape.name].append(run_shape(servers[name].port, texts, shape).texts_per_s)
            for name, server in servers.items():
                memory[name]["after"] = pss(server)
            time.sleep(IDLE_SECONDS)
            for name, server in servers.items():
                memory[name]["idle"] = pss(server)
            return {name: Measured(statistics.median(lone[name]), rates[name], memory[name],
                                   procs.get_json(server.port, "/health"))
                    for name, server in servers.items()}
        finally:
            for server in servers.values():
                server.stop()


def table(results: dict[str, Measured], extra: str = "", cell: Callable[[Measured], Any] | None = None) -> str:
    """One line per tree: lone p50, each shape's rounds and their mean, PSS; ``extra`` heads a last column
    whose cells ``cell(measured)`` gives."""
    width = max(8, *(len(name) for name in results))
    lines = [f"{'':{width}} {'lone p50 ms':>12} " + " ".join(f"{s.name + ' (mean)':>42}" for s in SHAPES)
             + f" {'PSS MB loaded/after/idle':>26}" + (f"  {extra}" if extra else "")]
    for name, m in results.items():
        cells = " ".join(f"{' / '.join(f'{r:.1f}' for r in m.rates[s.name])} ({statistics.mean(m.rates[s.name]):.1f})"
                         .rjust(42) for s in SHAPES)
        mem = m.memory
        lines.append(f"{name:{width}} {m.lone_ms:12.2f} {cells} "
                     f"{mem['loaded']:>8.0f} / {mem['after']:.0f} / {mem['idle']:.0f}"
                     + (f"  {cell(m)}" if cell else ""))
    return "\n".join(lines)
