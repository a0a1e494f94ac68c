"""`pdfast env`: versions, devices, and whether Triton and a GPU are usable."""
from __future__ import annotations

import os
import platform


def environment() -> dict:
    """A dict of versions and capabilities, also embedded in every report."""
    import torch

    info = {
        "pdfast": _version("pdfast"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "diffusers": _version("diffusers"),
        "numpy": _version("numpy"),
        "triton": _version("triton"),
        "cuda_available": torch.cuda.is_available(),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)",
        "cuda_version": torch.version.cuda,
        "torch_threads": torch.get_num_threads(),
        "triton_interpreter": os.environ.get("TRITON_INTERPRET") == "1",
    }
    info["triton_usable"] = bool(info["triton"]) and (info["cuda_available"] or info["triton_interpreter"])
    info.update(kernel_backends(cuda=info["cuda_available"]))
    return info


def kernel_backends(cuda: bool = False) -> dict:
    """{"kernels": {device: {op: backend}}, "native_library": status line}: which backend (native, triton, torch)
    each fused op of pdfast.kernels uses per device under the current PDFAST_KERNELS, and where the optional native
    library was loaded from or why it was not. Loads the native library if it is built; never raises."""
    try:
        from .kernels import backends, native
    except Exception as err:  # noqa: BLE001 - a broken install is reported, not raised, by `pdfast env`
        return {"kernels": f"unavailable ({type(err).__name__}: {err})", "native_library": None}
    devices = ["cpu"] + (["cuda"] if cuda else [])
    return {"kernels": {d: backends(d) for d in devices}, "native_library": native.status()}


def format_value(value) -> str:
    """A value of `environment()` as one line: nested dicts as "cpu: a=x, b=y; cuda: ..."."""
    if isinstance(value, dict):
        if all(isinstance(v, dict) for v in value.values()):
            return "; ".join(f"{k}: {format_value(v)}" for k, v in value.items())
        return ", ".join(f"{k}={v}" for k, v in value.items())
    return str(value)


def _version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None
