"""Shared launcher helpers: the backend choice per op and device, lazy @triton.jit, block sizes.

Nothing here imports triton at module import: `import pdfast.kernels` must work on a machine without triton, and
TRITON_INTERPRET is read by triton when a kernel is jitted, so jitting at the first launch (not at import) lets the
interpreter be switched on any time before the first launch. Nor is the native library loaded at import: the first
CPU dispatch loads it (pdfast.kernels.native).

Backends: "native" (the optional C++/CUDA library), "triton" (the fused kernels here), "torch" (the references).
PDFAST_KERNELS=auto (default) picks Triton for CUDA tensors, native for CPU tensors when the library is built, torch
otherwise; PDFAST_KERNELS=torch|native|triton forces one. PDFAST_FORCE_TRITON=1 (the interpreter tests) means
triton wherever PDFAST_KERNELS is auto.
"""
from __future__ import annotations

import functools
import os
import threading

import torch

from ..errors import PdfastError
from . import native

FORCE_ENV = "PDFAST_FORCE_TRITON"
KERNELS_ENV = "PDFAST_KERNELS"
BACKENDS = ("native", "triton", "torch")
OPS = ("ddpm_update", "shift_loss", "lstsq_scale")


class KernelSettingError(PdfastError, ValueError):
    """PDFAST_KERNELS is not one of auto, native, triton, torch (a one-line message: the CLI prints it as is)."""


class NativeUnavailableError(PdfastError, RuntimeError):
    """PDFAST_KERNELS=native, but the native library is not built, does not load, or lacks the device's kernel."""


def _env_key(name: str):
    try:
        return os.environ.encodekey(name)
    except AttributeError:  # os.environ is not CPython's _Environ
        return name


_ENV_KEYS = {KERNELS_ENV: _env_key(KERNELS_ENV), FORCE_ENV: _env_key(FORCE_ENV)}


def getenv(name: str) -> str | None:
    """os.environ.get(name) for the two settings above, read on every op call. os.environ.get raises and catches a
    KeyError for an unset variable, which costs microseconds: as much as a small native op. CPython's os.environ
    keeps its variables in the dict `_data` (updated by os.environ[...] = ... and monkeypatch.setenv alike); read it
    directly, falling back to os.environ.get elsewhere."""
    data = getattr(os.environ, "_data", None)
    if type(data) is not dict:
        return os.environ.get(name)
    value = data.get(_ENV_KEYS[name])
    return None if value is None else os.environ.decodevalue(value)


def requested_backend() -> str:
    """PDFAST_KERNELS: "auto" (unset or empty) or a forced backend; KernelSettingError for anything else."""
    value = (getenv(KERNELS_ENV) or "").strip().lower() or "auto"
    if value != "auto" and value not in BACKENDS:
        raise KernelSettingError(f"{KERNELS_ENV} must be one of auto, {', '.join(BACKENDS)}; "
                                 f"got {os.environ[KERNELS_ENV]!r}")
    return value


def _device_type(tensors) -> str:
    """"cuda" if any tensor is on CUDA, else the device type of the non-CPU tensors if any, else "cpu"."""
    device_type = "cpu"
    for t in tensors:
        if t is not None:
            if t.is_cuda:
                return "cuda"
            if not t.is_cpu:
                device_type = t.device.type
    return device_type


def _choose(op: str | None, device_type: str) -> str:
    requested = requested_backend()
    if requested == "native":
        if op is not None and not native.has_kernel(op, device_type):
            why = native.status() if not native.available() else f"it has no {device_type} kernels (built for: " \
                f"{', '.join(native.devices()) or 'none'})"
            raise NativeUnavailableError(f"{KERNELS_ENV}=native but the native library cannot run {op} on "
                                         f"{device_type}: {why}")
        return "native"
    if requested != "auto":
        return requested
    if getenv(FORCE_ENV) == "1" or device_type == "cuda":
        return "triton"
    if op is not None and native.has_kernel(op, device_type):
        return "native"
    return "torch"


def select_backend(op: str, *tensors: torch.Tensor | None) -> str:
    """The backend `op` runs on for these tensors: "native", "triton" or "torch" (see the module docstring).

    Raises KernelSettingError (a ValueError) for a bad PDFAST_KERNELS and NativeUnavailableError (a RuntimeError)
    when PDFAST_KERNELS=native cannot be honoured; both are PdfastError, one line each.
    """
    if getenv(KERNELS_ENV):
        return _choose(op, _device_type(tensors))
    # PDFAST_KERNELS unset: the hot path of every op call, the same decisions as _choose's auto branch, cheaper.
    if getenv(FORCE_ENV) == "1":
        return "triton"
    on_cpu = True
    for t in tensors:
        if t is not None:
            if t.is_cuda:
                return "triton"
            on_cpu = on_cpu and t.is_cpu
    return "native" if on_cpu and native.has_kernel(op, "cpu") else "torch"


def use_triton(*tensors: torch.Tensor | None) -> bool:
    """Triton path for CUDA tensors, or everywhere when PDFAST_FORCE_TRITON=1 / PDFAST_KERNELS=triton.

    Never dispatch on whether triton imports: on a CPU machine the import succeeds and every launch fails.
    """
    return _choose(None, _device_type(tensors)) == "triton"


def backends(device: torch.device | str = "cpu") -> dict[str, str]:
    """Which backend each fused op uses on `device` under the current settings, e.g. {"ddpm_update": "native", ...}.

    Never raises (for `pdfast env` and reports): a bad PDFAST_KERNELS reads "error: bad PDFAST_KERNELS" and a forced
    native backend that cannot run reads "error: native unavailable" (native.status() says why).
    """
    try:
        device_type = device.type if isinstance(device, torch.device) else torch.device(device).type
    except (RuntimeError, TypeError):
        return dict.fromkeys(OPS, f"error: unknown device {device!r}")
    out = {}
    for op in OPS:
        try:
            out[op] = _choose(op, device_type)
        except KernelSettingError:
            out[op] = f"error: bad {KERNELS_ENV}"
        except NativeUnavailableError:
            out[op] = "error: native unavailable"
    return out


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


def device_coefficients(coeffs, placeholder: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """(pointer argument, FROM_PTR) for a kernel whose coefficients come as python floats or as a device tensor:
    a tensor is passed as the pointer the kernel reads them from on the device (no host sync, so a CUDA graph can
    capture the launch and replay it with new values in the tensor); floats leave `placeholder` there, unread."""
    return (coeffs, True) if torch.is_tensor(coeffs) else (placeholder, False)


def check_coefficient_row(op: str, row, n: int, like: torch.Tensor) -> None:
    """A coefficient row of a *_row op: a floating tensor of at least n elements, contiguous in its first n, on
    like's device, and not asking for a gradient (the coefficients are constants); ValueError in one line."""
    if not torch.is_tensor(row) or not row.is_floating_point() or row.numel() < n or row.dim() > 1:
        raise ValueError(f"{op}: the coefficients must be a floating tensor of at least {n} elements in at most one "
                         f"dimension, got {type(row).__name__} {tuple(getattr(row, 'shape', ()))}")
    if row.dim() == 1 and n > 1 and row.stride(0) != 1:
        raise ValueError(f"{op}: the coefficient row must be contiguous, got stride {row.stride(0)}")
    if row.device != like.device:
        raise ValueError(f"{op}: the coefficients are on {row.device}, the tensors on {like.device}")
    if row.requires_grad and torch.is_grad_enabled():
        raise ValueError(f"{op}: the coefficients are constants and get no gradient; pass row.detach()")


def result_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    return functools.reduce(torch.promote_types, [t.dtype for t in tensors if t is not None])


def compute_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    """The dtype the references compute in: at least fp32 (like the kernels), fp64 kept for gradcheck."""
    return torch.promote_types(result_dtype(*tensors), torch.float32)
