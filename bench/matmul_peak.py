"""This machine's fp32 matrix-multiply peak: ``python bench/matmul_peak.py`` prints one JSON line.

Two 2048 x 2048 float32 matrices are multiplied by numpy's BLAS on every core, and by torch on one thread (a
core's peak, times the physical cores); the best of several timings of each (so that a moment of other load
does not decide) gives GFLOP/s at 2 n^3 FLOPs a product, and the higher of the two is the peak.
bench/sidecar.py divides it by a model's FLOPs a text for the physical limit of texts/s.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def best_seconds(product: Callable[[], object], repeats: int = 7) -> float:
    product()  # warm-up: threads started, pages touched
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        product()
        best = min(best, time.perf_counter() - start)
    return best


def main(n: int = 2048) -> None:
    from worker.devices import physical_cores

    flop = 2 * n**3
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    numpy_all = flop / best_seconds(lambda: a @ b) / 1e9
    cores = physical_cores()
    torch_core = 0.0
    try:
        import torch

        torch.set_num_threads(1)
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        torch_core = flop / best_seconds(lambda: ta @ tb) / 1e9
    except ImportError:
        pass
    print(json.dumps({"gflops": round(max(numpy_all, torch_core * cores), 1), "numpy_all_cores_gflops":
                      round(numpy_all, 1), "torch_one_core_gflops": round(torch_core, 1), "cores": cores, "n": n}))


if __name__ == "__main__":
    main()
