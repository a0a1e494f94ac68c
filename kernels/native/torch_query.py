"""What CMakeLists.txt needs to know of the installed torch, written as CMake `set()` lines to the file it names.

    python kernels/native/torch_query.py OUT.cmake

Run by CMake at configure with the Python whose torch the library is built against. It reports the torch version,
its CUDA version (empty for a CPU build), its headers, libraries and C++ ABI, so that the CPU library can be built
without torch's CMake package (whose CUDA part stops the configure of a CUDA build of torch on a machine without a
CUDA toolkit), and the CUDA toolkits that pip wheels installed beside torch (site-packages/nvidia/cu*), which the
CUDA backend may use where no system toolkit is found (docs/native.md, "CUDA").
"""
from __future__ import annotations

import sys
from pathlib import Path


def _cmake_str(value) -> str:
    return '"' + str(value).replace("\\", "/").replace('"', '\\"') + '"'


def _wheel_cuda_roots(torch_dir: Path) -> list[str]:
    """site-packages/nvidia/cu<N> (one folder for the whole toolkit, CUDA 13 wheels) and nvidia/cuda_runtime
    (CUDA 12 wheels), wherever a cuda_runtime.h lies under them."""
    nvidia = torch_dir.parent / "nvidia"
    if not nvidia.is_dir():
        return []
    roots = sorted(nvidia.glob("cu[0-9]*")) + [nvidia / "cuda_runtime"]
    return [str(r) for r in roots if (r / "include" / "cuda_runtime.h").is_file()]


def main(out: str) -> int:
    import torch
    import torch.utils

    torch_dir = Path(torch.__file__).resolve().parent
    values = {
        "PDFAST_PY_TORCH_VERSION": torch.__version__,
        "PDFAST_PY_TORCH_CUDA": torch.version.cuda or "",
        "PDFAST_PY_TORCH_CMAKE_PREFIX": torch.utils.cmake_prefix_path,
        "PDFAST_PY_TORCH_DIR": torch_dir,
        "PDFAST_PY_TORCH_LIBDIR": torch_dir / "lib",
        "PDFAST_PY_TORCH_ABI": int(bool(torch._C._GLIBCXX_USE_CXX11_ABI)),
    }
    lines = [f"set({k} {_cmake_str(v)})" for k, v in values.items()]
    includes = [torch_dir / "include", torch_dir / "include" / "torch" / "csrc" / "api" / "include"]
    lines.append("set(PDFAST_PY_TORCH_INCLUDES " + " ".join(_cmake_str(p) for p in includes) + ")")
    lines.append("set(PDFAST_PY_CUDA_WHEEL_ROOTS " + " ".join(_cmake_str(p) for p in _wheel_cuda_roots(torch_dir))
                 + ")")
    Path(out).write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
