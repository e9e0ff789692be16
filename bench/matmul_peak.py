"""This machine's matrix-multiply peak: ``python bench/matmul_peak.py [--dtype fp32|bf16]`` prints one JSON line.

fp32 (the default): two 2048 x 2048 float32 matrices are multiplied by numpy's BLAS on every core, and by
torch on one thread (a core's peak, times the physical cores). bf16: the same product in torch bfloat16, on
every core and on one thread times the cores; on a CPU without native bf16 (AVX512-BF16 or AMX) torch
emulates it, which is slow, and the figure says so. The best of several timings of each (so that a moment of
other load does not decide) gives GFLOP/s at 2 n^3 FLOPs a product, and the higher of the two is the peak.
bench/sidecar.py and bench/peers.py divide it by a model's FLOPs a text for the physical limit of texts/s.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def best_seconds(product: Callable[[], object], repeats: int = 7, budget: float = 5.0) -> float:
    """The fastest of ``repeats`` timed products after one warm-up (threads started, pages touched); fewer
    when they would take more than ``budget`` seconds (an emulated bf16 product can take seconds)."""
    start = time.perf_counter()
    product()
    best = time.perf_counter() - start
    for _ in range(max(1, min(repeats, int(budget / max(best, 1e-6))))):
        start = time.perf_counter()
        product()
        best = min(best, time.perf_counter() - start)
    return best


def fp32_peak(a: np.ndarray, b: np.ndarray, cores: int, flop: int) -> dict[str, float]:
    numpy_all = flop / best_seconds(lambda: a @ b) / 1e9
    torch_core = 0.0
    try:
        import torch

        torch.set_num_threads(1)
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        torch_core = flop / best_seconds(lambda: ta @ tb) / 1e9
    except ImportError:
        pass
    return {"gflops": round(max(numpy_all, torch_core * cores), 1), "numpy_all_cores_gflops": round(numpy_all, 1),
            "torch_one_core_gflops": round(torch_core, 1)}


def bf16_peak(a: np.ndarray, b: np.ndarray, cores: int, flop: int) -> dict[str, float]:
    import torch

    ta, tb = torch.from_numpy(a).bfloat16(), torch.from_numpy(b).bfloat16()
    torch.set_num_threads(cores)
    torch_all = flop / best_seconds(lambda: ta @ tb) / 1e9
    torch.set_num_threads(1)
    torch_core = flop / best_seconds(lambda: ta @ tb) / 1e9
    return {"gflops": round(max(torch_all, torch_core * cores), 1), "torch_all_cores_gflops": round(torch_all, 1),
            "torch_one_core_gflops": round(torch_core, 1)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--n", type=int, default=2048, help="matrix side (default 2048)")
    args = parser.parse_args(argv)
    from worker.devices import physical_cores

    flop = 2 * args.n**3
    rng = np.random.default_rng(0)
    a = rng.standard_normal((args.n, args.n), dtype=np.float32)
    b = rng.standard_normal((args.n, args.n), dtype=np.float32)
    cores = physical_cores()
    peak = (fp32_peak if args.dtype == "fp32" else bf16_peak)(a, b, cores, flop)
    print(json.dumps({"dtype": args.dtype, **peak, "cores": cores, "n": args.n}))


if __name__ == "__main__":
    main()
