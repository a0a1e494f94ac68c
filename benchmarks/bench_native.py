"""Native CPU ops against the torch references, medians side by side in one run (issue 10: >= 1.5x at chain sizes).

    OMP_NUM_THREADS=1 python benchmarks/bench_native.py            # writes benchmarks/results/native-ops-cpu.md

Each case is timed on the same inputs for the torch reference (the `*_ref` functions, what the CPU path ran before
the native build) and for the native library through the public functions in auto dispatch (PDFAST_KERNELS unset:
they pick native for CPU tensors), so the native time includes pdfast's shape checks and dispatch and the torch.ops
call. Per round, each side runs for at
least --min-s seconds (perf_counter per call, after a warm-up) and gives its median; rounds alternate reference and
native, and the table reports the median of the round medians. Shapes: the chain state, batch 40 x 3x32x32 (the
inversion batch) and batch 16 x 3x16x16. Before timing, every native case is checked against its reference. glibc
malloc's adaptive thresholds are pinned first (pin_malloc; --no-pin-malloc leaves them), and the table reports the
minor page faults per call of each side.

benchmarks/test_bench_native.py has the same cases as pytest-benchmark tests per op and backend.
"""
from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import platform
import statistics
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHAPES = [(40, 3, 32, 32), (16, 3, 16, 16)]
COEFFS = (1.0050, 0.0200, 0.1400)  # c1, c2, sigma near t = T for the linear DDPM schedule
LAM = 0.5
CASES = ["ddpm_update fwd (noise)", "ddpm_update fwd+bwd (grad x, eps, noise)", "shift_loss l1 fwd+bwd",
         "shift_loss l2 fwd+bwd", "lstsq_scale fwd"]


def functions(backend: str) -> dict:
    """The three ops as a backend runs them: "torch" the references themselves, otherwise the public functions
    (the caller forces the backend with PDFAST_KERNELS)."""
    import pdfast.kernels as K

    if backend == "torch":
        return {"ddpm_update": K.ddpm_update_ref, "shift_loss": K.shift_loss_ref, "lstsq_scale": K.lstsq_scale_ref}
    return {"ddpm_update": K.ddpm_update, "shift_loss": K.shift_loss, "lstsq_scale": K.lstsq_scale}


def inputs(shape, device="cpu", dtype=None, seed=0) -> dict:
    import torch

    dtype = dtype or torch.float32
    gen = torch.Generator(device="cpu").manual_seed(seed)

    def randn(*s, grad=False):
        return torch.randn(s, generator=gen, dtype=dtype).to(device).requires_grad_(grad)

    b, c, h, w = shape
    return {"x": randn(*shape, grad=True), "eps": randn(*shape, grad=True), "noise": randn(*shape, grad=True),
            "g": randn(*shape), "delta": randn(1, c, h, w, grad=True), "eps_hat": randn(*shape, grad=True)}


def case(name: str, fns: dict, inp: dict):
    """A no-argument callable running one case; it returns what the case computes (for the correctness check)."""
    import torch

    x, eps, noise, g, delta, eps_hat = (inp[k] for k in ("x", "eps", "noise", "g", "delta", "eps_hat"))
    update, loss, lstsq = fns["ddpm_update"], fns["shift_loss"], fns["lstsq_scale"]
    if name == "ddpm_update fwd (noise)":
        def run():
            with torch.no_grad():
                return (update(x, eps, *COEFFS, noise=noise),)
    elif name == "ddpm_update fwd+bwd (grad x, eps, noise)":
        def run():
            return torch.autograd.grad(update(x, eps, *COEFFS, noise=noise), (x, eps, noise), g)
    elif name.startswith("shift_loss"):
        norm = name.split()[1]

        def run():
            value = loss(eps_hat, delta, LAM, norm)
            return (value.detach(), *torch.autograd.grad(value, (eps_hat, delta)))
    elif name == "lstsq_scale fwd":
        def run():
            with torch.no_grad():
                return (lstsq(eps_hat, delta),)
    else:
        raise ValueError(f"unknown case {name!r}")
    return run


def time_median(fn, min_s: float, warmup: int = 20) -> tuple[float, float]:
    """(median ms per call, minor page faults per call) over at least min_s seconds and 10 calls, after a warm-up."""
    for _ in range(warmup):
        fn()
    faults0 = _minor_faults()
    times, start = [], time.perf_counter()
    while time.perf_counter() - start < min_s or len(times) < 10:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3, (_minor_faults() - faults0) / len(times)


def _minor_faults() -> int:
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    except (ImportError, OSError):
        return 0


def pin_malloc() -> str | None:
    """Fix glibc malloc's mmap and trim thresholds (they adapt to the allocation history otherwise).

    Interleaved with the native op, the reference's 480 KiB temporaries end up returned to the OS after every call
    and faulted in again on the next (about 250 minor faults per call, 5-9x its time alone); pinned, neither side
    pays for the other's allocations and the reference runs as fast as it does alone. Returns a description, or None
    where mallopt is not available."""
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        mmap_threshold, trim_threshold = 32 << 20, 64 << 20
        if libc.mallopt(-3, mmap_threshold) == 1 and libc.mallopt(-1, trim_threshold) == 1:  # M_MMAP/M_TRIM_THRESHOLD
            return "glibc mallopt M_MMAP_THRESHOLD=32 MiB, M_TRIM_THRESHOLD=64 MiB"
    except (OSError, AttributeError):
        pass
    return None


def cpu_name() -> str:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5, help="alternating reference/native rounds (default 5)")
    p.add_argument("--min-s", type=float, default=0.3, help="seconds per side per round (default 0.3)")
    p.add_argument("--out", type=pathlib.Path, default=ROOT / "benchmarks" / "results" / "native-ops-cpu.md")
    p.add_argument("--no-pin-malloc", action="store_true",
                   help="leave glibc malloc's adaptive thresholds alone (see pin_malloc)")
    args = p.parse_args(argv)
    pinned = None if args.no_pin_malloc else pin_malloc()

    import torch

    if os.environ.get("OMP_NUM_THREADS") is None:
        print("note: OMP_NUM_THREADS is unset; the issue's numbers are single-threaded (OMP_NUM_THREADS=1)",
              file=sys.stderr)
    os.environ.pop("PDFAST_KERNELS", None)  # auto: what users get on CPU once the library is built
    os.environ.pop("PDFAST_FORCE_TRITON", None)
    import pdfast.kernels as K

    if not K.native.available():
        print(f"error: the native library is not available: {K.native.status()}", file=sys.stderr)
        return 2
    if set(K.backends("cpu").values()) != {"native"}:
        print(f"error: auto dispatch does not pick native on CPU: {K.backends('cpu')}", file=sys.stderr)
        return 2
    rows = measure(torch, args.rounds, args.min_s)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    text = report(torch, K, rows, args, pinned)
    args.out.write_text(text)
    print(text)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


def measure(torch, rounds: int, min_s: float) -> list[dict]:
    """One row per (shape, case): round medians of both sides, alternating, after a correctness check."""
    ref_fns, native_fns = functions("torch"), functions("native")
    rows = []
    for shape in SHAPES:
        inp = inputs(shape)
        for name in CASES:
            ref, nat = case(name, ref_fns, inp), case(name, native_fns, inp)
            for a, b in zip(nat(), ref()):  # same numbers first (fp32 tolerance), then time
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * max(b.abs().max().item(), 1e-6))
            ref_ms, nat_ms, ref_pf, nat_pf = [], [], [], []
            for _ in range(rounds):
                for out_ms, out_pf, fn in ((ref_ms, ref_pf, ref), (nat_ms, nat_pf, nat)):
                    ms, pf = time_median(fn, min_s)
                    out_ms.append(ms)
                    out_pf.append(pf)
            r, n = statistics.median(ref_ms), statistics.median(nat_ms)
            ratios = [x / y for x, y in zip(ref_ms, nat_ms)]
            rows.append({"shape": "x".join(map(str, shape)), "case": name, "ref": r, "native": n, "ratio": r / n,
                         "spread": (min(ratios), max(ratios)),
                         "faults": (statistics.median(ref_pf), statistics.median(nat_pf))})
            print(f"{rows[-1]['shape']:>10}  {name:<40} torch {r:8.4f} ms  native {n:8.4f} ms  {r / n:5.2f}x",
                  file=sys.stderr)
    return rows


def report(torch, K, rows: list[dict], args, pinned: str | None) -> str:
    """The markdown of benchmarks/results/native-ops-cpu.md."""
    info = K.native.build_info()
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    worst = min(rows, key=lambda r: r["ratio"])
    omp = os.environ.get("OMP_NUM_THREADS")
    lines = [
        "# Native CPU ops vs the torch references",
        "",
        f"- date: {date}",
        f"- device: {cpu_name()} ({os.cpu_count()} cores visible), OMP_NUM_THREADS={omp or 'unset'}, torch threads "
        f"{torch.get_num_threads()}",
        f"- versions: torch {torch.__version__}, Python {platform.python_version()}, native library configured "
        f"{info.get('configured', '?')} with {info.get('compiler', '?')} ({info.get('build_type', '?')}, OpenMP "
        f"{'on' if info.get('openmp') else 'off'}; no -march: at::vec kernels for "
        f"{info.get('cpu_capabilities', '?')}, this run uses {torch.ops.pdfast.cpu_capability()} like torch's own "
        f"{torch.backends.cpu.get_cpu_capability()})",
        f"- command: `{'OMP_NUM_THREADS=' + omp + ' ' if omp else ''}python benchmarks/bench_native.py "
        f"--rounds {args.rounds} --min-s {args.min_s}{' --no-pin-malloc' if args.no_pin_malloc else ''}`",
        f"- method: fp32; per case the same inputs; {args.rounds} alternating rounds of >= {args.min_s} s per side, "
        "each a median of per-call perf_counter times after 20 warm-up calls; the table has the median of the round "
        "medians. torch = the `*_ref` functions called directly; native = the public functions in auto dispatch "
        "(PDFAST_KERNELS unset, so they pick native; shape checks, dispatch and the torch.ops call included). "
        "Every native result was checked against the reference first (rtol 1e-5).",
        f"- allocator: {pinned or 'adaptive (not pinned)'}; minor page faults per call are in the last column "
        "(interleaved runs with glibc's adaptive thresholds made the reference re-fault its temporaries on every "
        "call: see pin_malloc in benchmarks/bench_native.py).",
        "",
        "| shape | case | torch ref median ms | native median ms | speedup | speedup range over rounds | "
        "page faults/call ref, native |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['shape']} | {r['case']} | {r['ref']:.4f} | {r['native']:.4f} | {r['ratio']:.2f}x | "
                     f"{r['spread'][0]:.2f}-{r['spread'][1]:.2f}x | {r['faults'][0]:.1f}, {r['faults'][1]:.1f} |")
    lines += ["", f"Smallest speedup: {worst['ratio']:.2f}x ({worst['case']}, {worst['shape']}); the issue's target "
              f"is 1.5x: {'met' if worst['ratio'] >= 1.5 else 'NOT met'} on every case.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
