"""The optional native build of the fused ops (C++ with at::vec + OpenMP, CUDA where built): a lazy loader.

The library (CMakeLists.txt, sources in kernels/native/, docs/native.md) registers torch.ops.pdfast.ddpm_update,
shift_loss and lstsq_scale with their autograd. It is found at $PDFAST_NATIVE_LIB, else in kernels/_native/ where
`python -m pdfast.kernels.native_build` installs it. Nothing is loaded at import: the first `available()` (the
first dispatch of an op) loads it with torch.ops.load_library, once per process, and never raises: a missing,
stale or broken library just leaves the ops on their Triton / torch paths, with the reason in `status()`.
"""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import torch

LIB_ENV = "PDFAST_NATIVE_LIB"
LIB_NAMES = ("libpdfast_native.so", "libpdfast_native.dylib", "pdfast_native.dll")
INSTALL_DIR = Path(__file__).resolve().with_name("_native")
BUILD_COMMAND = "python -m pdfast.kernels.native_build"

# Public op -> the op whose device kernel decides whether the op runs natively on a device (the public loss ops
# have one backend-independent kernel that calls their *_forward op).
KERNEL_OPS = {"ddpm_update": "ddpm_update", "shift_loss": "shift_loss_forward", "lstsq_scale": "lstsq_scale_forward"}

_lock = threading.Lock()
_state: dict | None = None  # {"loaded": bool, "path": str | None, "reason": str, "info": dict}
_kernels: dict = {}


def library_path() -> Path:
    """Where the library is looked for: $PDFAST_NATIVE_LIB, else the first built name in kernels/_native/."""
    env = os.environ.get(LIB_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    for name in LIB_NAMES:
        if (INSTALL_DIR / name).exists():
            return INSTALL_DIR / name
    return INSTALL_DIR / LIB_NAMES[0]


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}"


def _build_info(path: Path) -> dict:
    try:
        return json.loads(path.with_name("build_info.json").read_text())
    except (OSError, ValueError):
        return {}


def _torch_mismatch(built: str) -> bool:
    """True when the library was built against another torch (a local suffix such as +cpu is compared when both
    versions have one: a +cu121 build and a +cpu build differ in ABI)."""
    running = torch.__version__
    if "+" not in built or "+" not in running:
        return built.split("+")[0] != running.split("+")[0]
    return built != running


def _load() -> dict:
    path = library_path()
    state = {"loaded": False, "path": str(path), "reason": "", "info": {}}
    if os.environ.get(LIB_ENV, "").strip() and not path.is_file():
        state["reason"] = f"{LIB_ENV}={path} does not exist"
        return state
    if not path.is_file():
        state["reason"] = f"not built (run `{BUILD_COMMAND}`)"
        return state
    info = state["info"] = _build_info(path)
    if info.get("torch") and _torch_mismatch(str(info["torch"])):
        state["reason"] = (f"{path} was built against torch {info['torch']}, this is torch {torch.__version__}: "
                           f"rebuild with `{BUILD_COMMAND}`")
        return state
    try:
        torch.ops.load_library(str(path))
    except Exception as err:  # a corrupt file, an ABI mismatch, a second library registering pdfast
        state["reason"] = f"{path} failed to load ({_first_line(err)})"
        return state
    missing = [op for op in KERNEL_OPS.values() if not torch._C._dispatch_has_kernel(f"pdfast::{op}")]
    if missing:
        state["reason"] = f"{path} loaded but does not register pdfast::{', '.join(missing)}"
        return state
    state["loaded"] = True
    state["reason"] = f"loaded from {path}"
    return state


def _ensure() -> dict:
    global _state
    if _state is None:
        with _lock:
            if _state is None:
                try:
                    _state = _load()
                except Exception as err:  # never let a loader bug break an op: report it instead
                    _state = {"loaded": False, "path": None, "reason": f"loader error ({_first_line(err)})",
                              "info": {}}
    return _state


def available() -> bool:
    """Whether the native library is loaded (loading it now if this is the first call). Never raises."""
    return _ensure()["loaded"]


def status() -> str:
    """One line: where the library was loaded from, or why it is not available."""
    return _ensure()["reason"]


def build_info() -> dict:
    """build_info.json written beside the library by the build (torch version, cuda, compiler, date); {} if none."""
    return dict(_ensure()["info"])


_DISPATCH_KEYS = {"cpu": "CPU", "cuda": "CUDA"}  # the devices the library has compute kernels for


def has_kernel(op: str, device_type: str) -> bool:
    """Whether the native library is loaded and has a `device_type` kernel ("cpu", "cuda") for the public op."""
    key = (op, device_type)
    if key not in _kernels:
        if op not in KERNEL_OPS:
            raise ValueError(f"unknown op {op!r}: one of {', '.join(KERNEL_OPS)}")
        _kernels[key] = (device_type in _DISPATCH_KEYS and available() and
                         torch._C._dispatch_has_kernel_for_dispatch_key(f"pdfast::{KERNEL_OPS[op]}",
                                                                        _DISPATCH_KEYS[device_type]))
    return _kernels[key]


def devices() -> list[str]:
    """Device types the loaded library has kernels for (all three ops), e.g. ["cpu"]; [] when not available."""
    return [d for d in ("cpu", "cuda") if all(has_kernel(op, d) for op in KERNEL_OPS)]


# ---------------------------------------------------------------- the ops (call only when has_kernel is true)


def ddpm_update(x, eps, c1: float, c2: float, sigma: float, noise=None):
    return torch.ops.pdfast.ddpm_update.default(x, eps, c1, c2, sigma, noise)


def shift_loss(eps_hat, delta, lam: float, l2: bool):
    return torch.ops.pdfast.shift_loss.default(eps_hat, delta, lam, l2)


def lstsq_scale(eps_hat, delta):
    return torch.ops.pdfast.lstsq_scale.default(eps_hat, delta)
