"""The plain-text table that bench/run.py prints from its results."""

from __future__ import annotations

from typing import Any

SERVERS = (("seed", "seed-design server"), ("cluster", "embed-cluster"))


def _num(value: Any, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def render(r: dict[str, Any]) -> str:
    m = r["machine"]
    info = r.get("cluster_info") or {}
    lines = [
        f"model: {r['model']}"
        + (f" ({info.get('dim')} dims; cluster: {info.get('workers')} worker(s), precision {info.get('precision')}"
           f", args {' '.join(r['cluster_args']) or 'default'})" if info else ""),
        f"texts: {r['corpus']}",
        f"machine: {m['cpu']}, {m['logical_cpus']} logical CPUs, {m['physical_cores']} physical cores, "
        f"Python {m['python']}; load average {r['load_average_start'][0]:.2f} at start, "
        f"{r['load_average_end'][0]:.2f} at end (above ~0.5 at start: other work shared the CPUs)",
        "",
    ]
    fp32 = (r.get("inprocess_fp32") or {}).get("texts_per_s")
    if fp32:
        cpu, others = r["inprocess_fp32"].get("cpu_ms_per_text"), r["inprocess_fp32"].get("others_cores")
        lines.append(f"in-process encode, fp32, batch_size=32: {fp32:8.2f} texts/s  ({_num(cpu)} ms CPU a text; "
                     f"others {_num(others, 2)})")
    bf16 = r.get("inprocess_bf16")
    if bf16:
        lines.append(f"in-process encode, bf16, batch_size=32: {bf16['texts_per_s']:8.2f} texts/s  "
                     f"(on {bf16['texts']} of the texts, where fp32 did {bf16['fp32_on_same_texts_per_s']:.2f}; "
                     f"worst cosine to fp32 {bf16['min_cosine_to_fp32']:.5f})")
    ceiling = r.get("ceiling") or {}
    if ceiling:
        lines.append(f"compute ceiling, {ceiling['precision']}: {ceiling['texts_per_s']:8.2f} texts/s  "
                     f"({ceiling['cores']} cores x {ceiling['per_core_texts_per_s']:.2f} texts/s of one thread's CPU "
                     f"time: the worker's model code and planner, {ceiling['batches']} batches, no serving)")
    header = (f"{'shape':<24}{'server':<20}{'texts/s':>9}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}"
              f"{'x fp32':>8}{'x seed':>8}{'x ceil':>8}{'min cos':>10}{'others':>8}")
    lines += ["", header, "-" * len(header)]
    names = next((list(r[k]["shapes"]) for k, _ in SERVERS if "shapes" in r.get(k, {})), [])
    for name in names:
        for key, title in SERVERS:
            shape = r.get(key, {}).get("shapes", {}).get(name)
            if shape is None:
                continue
            seed = r.get("seed", {}).get("shapes", {}).get(name, {}).get("texts_per_s")
            rate = shape["texts_per_s"]
            lines.append(
                f"{name if key == 'seed' or not seed else '':<24}{title:<20}{rate:>9.2f}{_num(shape['p50_ms']):>9}"
                f"{_num(shape['p95_ms']):>9}{_num(shape['p99_ms']):>9}"
                f"{_num(rate / fp32 if fp32 else None, 2):>8}"
                f"{_num(rate / seed if seed and key != 'seed' else None, 2):>8}"
                f"{_num(rate / ceiling['texts_per_s'] if ceiling else None, 2):>8}"
                f"{_num(shape.get('min_cosine'), 5):>10}{_num(shape.get('others_cores'), 2):>8}")
    for key, title in SERVERS:
        light = r.get(key, {}).get("light")
        if light:
            lines.append(f"{'1 text at light load' if key == 'seed' or 'seed' not in r else '':<24}{title:<20}"
                         f"{'':>9}{light['p50_ms']:>9.1f}{light['p95_ms']:>9.1f}{light['p99_ms']:>9.1f}")
    lines.append("others: cores that other processes on the machine used during the measurement (0: a quiet machine)")
    lines += ["", "memory, MB, after the run: resident now / resident at peak / proportional (shared pages split)"]
    for key, title in SERVERS:
        memory = r.get(key, {}).get("memory")
        if memory:
            parts = ", ".join(f"{role} {v['rss_mb']:.0f} / {v['peak_mb']:.0f} / {v.get('pss_mb', 0):.0f}"
                              for role, v in sorted(memory.items()))
            lines.append(f"  {title}: {parts}")
    lines += ["", "CPU time per text, ms, by process (client: the load generator):"]
    for key, title in SERVERS:
        for name, shape in r.get(key, {}).get("shapes", {}).items():
            cpu = shape.get("cpu_ms_per_text") or {}
            lines.append(f"  {title}, {name}: " + ", ".join(f"{role} {ms:.1f}" for role, ms in sorted(cpu.items())))
    for key, title in SERVERS:
        if "error" in r.get(key, {}):
            lines.append(f"{title} FAILED: {r[key]['error']}")
    return "\n".join(lines)
