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
    return info


def _version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None
