"""The number formats a worker can run its model in, and how each is put on (and taken off) a model.

- ``fp32``: the model as saved.
- ``bf16`` / ``fp16``: every weight and activation cast (``model.to(dtype)``); fast on CUDA, and bf16 on CPUs
  with native bf16 instructions (AVX512-BF16 or AMX); several times slower than fp32 on other CPUs.
- ``fp16w``: CPU only. The weights of every ``Linear`` layer are stored as fp16 and packed once, at load,
  for fbgemm's fp16 GEMM; the arithmetic stays fp32. The encoder's weights take half the memory and a forward
  pass reads half the bytes; a small batch (one query) no longer repacks fp32 weights on every pass.
  ``python bench/precision.py --kernels`` compares it with fp32 (one query's latency, a corpus's rate, memory,
  cosine) and the other Linear kernels torch offers on a CPU.

:func:`apply` puts a format on a model and returns an :class:`Applied` that can restore fp32 exactly: the
embedder keeps a format only after checking its vectors against fp32 (worker/embedder.py), and then
:meth:`Applied.keep` frees what only restoring would have needed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import mmap
import sys
from typing import Any, Protocol

log = logging.getLogger(__name__)

MADV_DONTNEED = 4  # Linux

def auto_candidates(device: str) -> list[str]:
    """What ``--precision auto`` tries on ``device``, best first; fp32 when all are rejected."""
    if device.startswith("cuda"):
        return ["fp16"]
    if device != "cpu":  # mps: fp32 until measured there
        return []
    candidates = ["bf16"] if cpu_has_fast_bf16() else []
    return candidates + (["fp16w"] if fp16_weight_packing_available() else [])


class Applied(Protocol):
    def restore(self) -> None:
        """Put the exact fp32 weights back."""

    def keep(self) -> None:
        """Keep this format: free what restoring would have needed."""


def apply(model: Any, precision: str, device: str) -> Applied:
    """Put ``precision`` on ``model`` in place; then :meth:`Applied.keep` it or :meth:`Applied.restore` fp32."""
    if precision == "fp16w":
        if device != "cpu" or not fp16_weight_packing_available():
            raise ValueError("fp16w needs a CPU with fbgemm (x86-64)")
        return PackedFp16Weights(model)
    return Cast(model, precision)


class Cast:
    """Every weight cast to bf16 or fp16 (``model.to``); a copy of the fp32 weights is kept until :meth:`keep`."""

    def __init__(self, model: Any, precision: str) -> None:
        import torch

        self.model = model
        self.saved: dict[str, Any] = {name: t.detach().clone() for name, t in model.state_dict().items()}
        model.to({"bf16": torch.bfloat16, "fp16": torch.float16}[precision])

    def restore(self) -> None:
        import torch

        self.model.to(torch.float32)
        self.model.load_state_dict(self.saved)  # a cast to 16 bits and back would have rounded every weight
        self.saved = {}

    def keep(self) -> None:
        self.saved = {}


class PackedFp16Weights:
    """Every ``nn.Linear`` replaced by one whose weight is packed as fp16 for fbgemm (see the module's doc)."""

    def __init__(self, model: Any) -> None:
        import torch

        linear = _fp16_weight_linear_class()
        self.replaced: list[tuple[Any, str, Any]] = []
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if type(child) is torch.nn.Linear:
                    setattr(parent, name, linear(child))
                    self.replaced.append((parent, name, child))

    def restore(self) -> None:
        for parent, name, child in self.replaced:
            setattr(parent, name, child)
        self.replaced = []

    def keep(self) -> None:
        """Drop the fp32 weights; where they lie in the mapped weights file, give their pages back too."""
        released = release_file_pages([child.weight for _, _, child in self.replaced])
        log.info("fp16w: %.1f MB of fp32 weights released", released / 2**20)
        self.replaced = []


def cpu_has_fast_bf16() -> bool:
    """True when the CPU has native bf16 matrix instructions (AVX512-BF16 or AMX); on others bf16 is slow."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def fp16_weight_packing_available() -> bool:
    """Whether this torch build has fbgemm's fp16-weight linear (x86-64 builds do; ARM's qnnpack does not)."""
    import torch

    try:
        packed = torch.ops.quantized.linear_prepack_fp16(torch.ones(8, 8), None)
        torch.ops.quantized.linear_dynamic_fp16(torch.ones(1, 8), packed)
    except (RuntimeError, AttributeError, NotImplementedError):
        return False
    return True


def _fp16_weight_linear_class() -> type:
    import torch

    class Fp16WeightLinear(torch.nn.Module):
        """``nn.Linear`` with its weight packed as fp16 for fbgemm; inputs, outputs and arithmetic in fp32."""

        def __init__(self, linear: torch.nn.Linear) -> None:
            super().__init__()
            self.in_features, self.out_features = linear.in_features, linear.out_features
            bias = None if linear.bias is None else linear.bias.detach().float().clone()  # not the file's pages
            self.packed = torch.ops.quantized.linear_prepack_fp16(linear.weight.detach().float(), bias)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.ops.quantized.linear_dynamic_fp16(x, self.packed)

    return Fp16WeightLinear


def release_file_pages(tensors: list[Any]) -> int:
    """Drop the resident pages of the given (no longer used) tensors where they lie in a mapped weights file.

    sentence-transformers maps safetensors files into memory, and a weight's pages stay resident while the
    mapping lives, which is as long as any weight of the file does. When fp16w has packed the Linear weights,
    their fp32 pages would stay resident for nothing: ``madvise(MADV_DONTNEED)`` gives them back (a private file
    mapping reads them from the file again if ever touched). Only whole pages inside a ``.safetensors``
    mapping are released, never heap memory. Linux only; returns the bytes released.
    """
    if not sys.platform.startswith("linux"):
        return 0
    mapped = []
    with open("/proc/self/maps", encoding="utf-8") as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 6 and fields[-1].endswith(".safetensors"):
                start, end = (int(x, 16) for x in fields[0].split("-"))
                mapped.append((start, end))
    if not mapped:
        return 0
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    page, released = mmap.PAGESIZE, 0
    for tensor in tensors:
        first = tensor.data_ptr()
        last = first + tensor.numel() * tensor.element_size()
        if not any(start <= first and last <= end for start, end in mapped):
            continue
        low, high = -(-first // page) * page, last // page * page  # whole pages inside the tensor only
        if high > low and libc.madvise(low, high - low, MADV_DONTNEED) == 0:
            released += high - low
    return released
