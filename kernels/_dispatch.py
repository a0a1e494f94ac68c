"""Shared launcher helpers: the Triton-or-reference decision, lazy @triton.jit, block sizes.

Nothing here imports triton at module import: `import pdfast.kernels` must work on a machine without triton, and
TRITON_INTERPRET is read by triton when a kernel is jitted, so jitting at the first launch (not at import) lets the
interpreter be switched on any time before the first launch.
"""
from __future__ import annotations

import functools
import os
import threading

import torch

FORCE_ENV = "PDFAST_FORCE_TRITON"


def use_triton(*tensors: torch.Tensor | None) -> bool:
    """Triton path for CUDA tensors, or everywhere when PDFAST_FORCE_TRITON=1 (tests under TRITON_INTERPRET=1).

    Never dispatch on whether triton imports: on a CPU machine the import succeeds and every launch fails.
    """
    if os.environ.get(FORCE_ENV, "") == "1":
        return True
    return any(t is not None and t.is_cuda for t in tensors)


def interpreting() -> bool:
    """Whether triton.jit would build an interpreted kernel now (TRITON_INTERPRET parsed as triton does)."""
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in ("1", "true", "yes", "on", "y")


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


# Each interpreted program instance costs about 0.5-0.8 ms, and numpy handles large blocks cheaply: one big block.
_INTERPRET_MAX_BLOCK = 1 << 16


def elementwise_launch(n: int) -> tuple[int, int]:
    """(BLOCK, num_warps) for a flat elementwise kernel over n elements."""
    if interpreting():
        return max(16, min(next_power_of_2(n), _INTERPRET_MAX_BLOCK)), 4
    # 1024 fp32 per program, 4 warps: 8 elements per thread, two 128-bit loads per operand.
    return 1024, 4


def batch_loop_launch(n_per_image: int) -> tuple[int, int]:
    """(BLOCK, num_warps) for kernels whose programs own a block of per-image elements and loop over the batch.

    These grids have only cdiv(C*H*W, BLOCK) programs: 3072 elements at CIFAR size give 12 programs of 256, so
    smaller blocks than the elementwise 1024 (which would give 3 programs on a 132-SM GPU); 2 warps keep 4 fp32 per
    thread for 128-bit loads.
    """
    if interpreting():
        return max(16, min(next_power_of_2(n_per_image), _INTERPRET_MAX_BLOCK)), 4
    return 256, 2


class _LazyKernel:
    """A @triton.jit kernel jitted at its first launch (`kernel[grid](...)`), so triton is imported lazily.

    triton.jit fixes interpreted or compiled mode when it runs, so one jitted kernel is kept per mode: interpreter
    tests on CPU tensors and GPU tests can share one process. The kernel body refers to `tl`, bound here in the
    kernel module's globals to triton.language.
    """

    def __init__(self, fn):
        self.fn = fn
        self._jitted: dict[bool, object] = {}
        self._lock = threading.Lock()
        functools.update_wrapper(self, fn)

    def jitted(self):
        mode = interpreting()
        if mode not in self._jitted:
            with self._lock:
                if mode not in self._jitted:
                    import triton
                    import triton.language

                    self.fn.__globals__["tl"] = triton.language
                    self._jitted[mode] = triton.jit(self.fn)
        return self._jitted[mode]

    def __getitem__(self, grid):
        return self.jitted()[grid]


def lazy_jit(fn):
    """Like @triton.jit, but jits at the first launch. Kernel modules need `from __future__ import annotations`
    so that `BLOCK: tl.constexpr` stays a string until triton reads it."""
    return _LazyKernel(fn)


def result_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    return functools.reduce(torch.promote_types, [t.dtype for t in tensors if t is not None])


def compute_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    """The dtype the references compute in: at least fp32 (like the kernels), fp64 kept for gradcheck."""
    return torch.promote_types(result_dtype(*tensors), torch.float32)
