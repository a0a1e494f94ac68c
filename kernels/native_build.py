"""Build and install the optional native library: python -m pdfast.kernels.native_build [--cuda auto|on|off].

Runs CMake on the repository's CMakeLists.txt (configure, build, install into kernels/_native/), then loads the
library in a fresh process to check it. Missing tools fail with one line, a failed configure or compile with its
first errors and the path of the full log (build/native/build.log), never a traceback. With --if-possible (the
test command's form) a missing prerequisite (a source checkout, cmake >= 3.18, a C++ compiler, torch's C++ headers)
is not an error: one line says why the native backend is skipped and the exit status is 0; a failed configure or
compile still fails. The CUDA kernels are built only where CMake finds a usable CUDA toolkit matching torch's
(cmake/PdfastCuda.cmake): elsewhere, a CUDA build of torch on a machine without one included, CMake prints one
"CUDA backend skipped: <why>" line and the CPU library is built. docs/native.md has the details and the plain cmake commands this runs.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # kernels/ is the package dir of pdfast.kernels in a source checkout
PREFIX = "pdfast native build"


MIN_CMAKE = (3, 18)  # CMakeLists.txt's cmake_minimum_required


class BuildError(Exception):
    """A failure reported as one message (plus an optional excerpt), not a traceback."""

    def __init__(self, message: str, excerpt: list[str] | None = None):
        super().__init__(message)
        self.excerpt = excerpt or []


class MissingPrerequisite(BuildError):
    """Something the build needs is not there (checked before CMake runs): --if-possible skips the build on these."""


def _cmake() -> str:
    cmake = shutil.which("cmake")
    if not cmake:
        raise MissingPrerequisite("cmake not found on PATH; install CMake >= 3.18 (e.g. pip install cmake)")
    try:
        out = subprocess.run([cmake, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as err:
        raise MissingPrerequisite(f"{cmake} --version does not run ({err}); install CMake >= 3.18") from None
    found = re.search(r"version (\d+)\.(\d+)", out)
    if found and (int(found[1]), int(found[2])) < MIN_CMAKE:
        raise MissingPrerequisite(f"cmake {found[1]}.{found[2]} at {cmake} is older than 3.18; install a newer one "
                                  "(e.g. pip install cmake)")
    return cmake


def _compiler() -> str:
    cxx = os.environ.get("CXX", "").strip()
    if cxx:
        found = shutil.which(cxx.split()[0])
        if not found:
            raise MissingPrerequisite(f"CXX={cxx} is not an executable C++ compiler; point CXX at g++ or clang++, "
                                      "or unset it")
        return found
    for name in ("c++", "g++", "clang++"):
        found = shutil.which(name)
        if found:
            return found
    raise MissingPrerequisite("no C++ compiler found (looked for c++, g++, clang++ on PATH); install g++ or set CXX")


def _torch_version() -> str:
    """The torch the library is built against: importable, with its C++ headers (every torch wheel ships them)."""
    try:
        import torch
    except Exception as err:  # noqa: BLE001 - any import failure is reported as one line
        raise MissingPrerequisite(f"cannot import torch in {sys.executable} ({type(err).__name__}: {err})") from None
    header = Path(torch.__file__).resolve().parent / "include" / "ATen" / "ATen.h"
    if not header.is_file():
        raise MissingPrerequisite(f"the installed torch {torch.__version__} has no C++ headers ({header} is "
                                  "missing); install a torch wheel that ships them")
    return torch.__version__


def _errors(log: str, limit: int = 12) -> list[str]:
    """The lines worth showing from a failed CMake or compiler run: CMake Error blocks, compiler error lines."""
    lines = log.splitlines()
    out: list[str] = []
    for i, line in enumerate(lines):
        if line.startswith("CMake Error"):
            block = [line]
            for nxt in lines[i + 1:]:
                if not nxt.strip() and len(block) > 1:
                    break
                block.append(nxt)
            out.extend(b for b in block if b.strip())
        elif re.search(r"\berror\b[: ]", line, re.IGNORECASE) and not line.startswith(("FAILED", "ninja:")):
            out.append(line)
        if len(out) >= limit:
            break
    if not out:  # nothing recognisable: the tail of the log
        out = [ln for ln in lines if ln.strip()][-limit:]
    return out[:limit]


def _run(step: str, cmd: list[str], log_path: Path, verbose: bool, env: dict) -> str:
    with open(log_path, "a") as log:
        log.write(f"\n$ {' '.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        chunks = []
        assert proc.stdout is not None
        for line in proc.stdout:
            chunks.append(line)
            log.write(line)
            if verbose:
                sys.stdout.write(line)
            elif line.startswith("-- pdfast native:"):
                sys.stdout.write(line[3:])
        proc.wait()
    text = "".join(chunks)
    if proc.returncode != 0:
        raise BuildError(f"{step} failed (exit {proc.returncode}); full log: {log_path}", _errors(text))
    return text


def build(build_dir: Path, cuda: str, build_type: str, jobs: int | None, clean: bool, verbose: bool,
          source: Path = ROOT) -> Path:
    if not (source / "CMakeLists.txt").is_file():
        raise MissingPrerequisite(f"no CMakeLists.txt in {source}: the native build needs a source checkout of "
                                  "pdfast (pip install -e .)")
    cmake = _cmake()
    compiler = _compiler()
    torch_version = _torch_version()  # checked here for a one-line error; CMake asks this Python again

    build_dir = build_dir if build_dir.is_absolute() else source / build_dir
    if clean and build_dir.exists():
        shutil.rmtree(build_dir)
    build_dir.mkdir(parents=True, exist_ok=True)
    log_path = build_dir / "build.log"
    log_path.write_text("")
    env = dict(os.environ)
    env.setdefault("CXX", compiler)

    configure = [cmake, "-S", str(source), "-B", str(build_dir), f"-DCMAKE_BUILD_TYPE={build_type}",
                 f"-DPython3_EXECUTABLE={sys.executable}",
                 f"-DPDFAST_NATIVE_CUDA={cuda.upper()}"]
    if not (build_dir / "CMakeCache.txt").exists() and shutil.which("ninja"):
        configure += ["-G", "Ninja"]  # an existing build dir keeps the generator it was configured with
    print(f"{PREFIX}: configuring with torch {torch_version}, {compiler} (log: {log_path})")
    _run("cmake configure", configure, log_path, verbose, env)
    build_cmd = [cmake, "--build", str(build_dir), "--target", "install"]
    if jobs:
        build_cmd += ["--parallel", str(jobs)]
    print(f"{PREFIX}: compiling (a minute or two)")
    _run("cmake build", build_cmd, log_path, verbose, env)

    check = ("import pdfast.kernels.native as n; ok = n.available(); print(n.status()); "
             "print('devices: ' + ', '.join(n.devices())); raise SystemExit(0 if ok else 1)")
    check_env = {k: v for k, v in os.environ.items() if k != "PDFAST_NATIVE_LIB"}
    if source != ROOT:  # the library this build installed (CMakeLists.txt's default install dir), not this checkout's
        installed = [p for p in (source / "kernels" / "_native").glob("*pdfast_native*") if p.suffix != ".json"]
        if installed:
            check_env["PDFAST_NATIVE_LIB"] = str(installed[0])
    proc = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, env=check_env)
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    if proc.returncode != 0:
        raise BuildError("built, but the library does not load: " + (lines[0] if lines else f"exit {proc.returncode}"),
                         lines[1:6])
    print(f"{PREFIX}: {lines[0]} ({lines[1] if len(lines) > 1 else ''})")
    return build_dir


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m pdfast.kernels.native_build", description=__doc__.splitlines()[0])
    p.add_argument("--build-dir", type=Path, default=Path("build/native"), help="CMake build directory "
                   "(relative to the repository root; default build/native)")
    p.add_argument("--cuda", choices=["auto", "on", "off"], default="auto",
                   help="CUDA kernels: auto builds them when nvcc is found and torch has CUDA (default auto)")
    p.add_argument("--build-type", default="Release", help="CMAKE_BUILD_TYPE (default Release)")
    p.add_argument("--jobs", "-j", type=int, default=None, help="parallel compile jobs (default: the generator's)")
    p.add_argument("--clean", action="store_true", help="delete the build directory first")
    p.add_argument("--source-dir", type=Path, default=ROOT, help="the source tree with CMakeLists.txt (default: "
                   "this checkout)")
    p.add_argument("--verbose", "-v", action="store_true", help="show the full CMake and compiler output")
    p.add_argument("--if-possible", action="store_true",
                   help="when cmake >= 3.18, a C++ compiler or torch's C++ headers are missing, print why the native "
                        "backend is skipped and exit 0 instead of failing (a failed configure or compile still fails)")
    args = p.parse_args(argv)
    try:
        build(args.build_dir, args.cuda, args.build_type, args.jobs, args.clean, args.verbose,
              args.source_dir.resolve())
    except MissingPrerequisite as err:
        if args.if_possible:
            print(f"{PREFIX}: native backend skipped: {err}")
            return 0
        print(f"{PREFIX}: error: {err}", file=sys.stderr)
        return 1
    except BuildError as err:
        print(f"{PREFIX}: error: {err}", file=sys.stderr)
        for line in err.excerpt:
            print(f"    {line}", file=sys.stderr)
        return 1
    except OSError as err:  # running cmake, writing the log
        print(f"{PREFIX}: error: {err.strerror or err} ({err.filename or ''})", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PREFIX}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
