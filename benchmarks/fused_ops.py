"""The fused ops against their torch references, medians side by side in one run (issue 10: >= 1.5x at chain sizes).

    OMP_NUM_THREADS=1 python benchmarks/fused_ops.py               # CPU: native library vs torch -> results/native-ops-cpu.md
    python benchmarks/fused_ops.py --device cuda                  # GPU: fused kernels vs torch -> results/fused-ops-<gpu>.md
    python benchmarks/fused_ops.py --device cuda --dtype bfloat16

It answers what one call of each fused op (ddpm_update forward and backward, shift_loss l1 and l2 with backward,
lstsq_scale) costs against its torch reference (the `*_ref` functions, what runs without a native build or Triton)
at chain-state shapes (--shapes; default batch 40 x 3x32x32, the inversion batch, and 16 x 3x16x16). The fused side
is the public functions in auto dispatch (PDFAST_KERNELS unset), so its time includes pdfast's shape checks and
dispatch: on CPU they must pick the native library (built with `python -m pdfast.kernels.native_build`), on CUDA
they pick Triton or the native CUDA kernels, as users get them. Before timing, every case is checked against its
reference on the same inputs (fp32: rtol 1e-5). Rounds alternate reference and fused (--rounds), the table reports
the median of the round medians and the range of the per-round speedups. CPU: per round each side runs for at least
--min-s seconds (perf_counter per call after a warm-up), glibc malloc's adaptive thresholds are pinned first
(pin_malloc; --no-pin-malloc leaves them) and the minor page faults per call are reported. CUDA: each round is
triton.testing.do_bench's median. Read ratios from one run, not absolute CPU times across runs.

benchmarks/test_bench_native.py has the same cases as pytest-benchmark tests per op and backend.
"""
from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import platform
import re
import statistics
import sys
import time

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
SHAPES = [(40, 3, 32, 32), (16, 3, 16, 16)]
COEFFS = (1.0050, 0.0200, 0.1400)  # c1, c2, sigma near t = T for the linear DDPM schedule
LAM = 0.5
CASES = ["ddpm_update fwd (noise)", "ddpm_update fwd+bwd (grad x, eps, noise)", "shift_loss l1 fwd+bwd",
         "shift_loss l2 fwd+bwd", "lstsq_scale fwd"]


def functions(backend: str) -> dict:
    """The three ops as a backend runs them: "torch" the references themselves, otherwise the public functions
    (the caller forces the backend with PDFAST_KERNELS, or leaves auto dispatch to pick it)."""
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


def check_close(torch, got, want) -> None:
    """The fused case computes what its reference computes (fp32 tolerance, scaled to the reference's magnitude)."""
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * max(b.abs().max().item(), 1e-6))


# ---------------------------------------------------------------- timers: (median ms per call, minor faults per call)


def time_median(fn, min_s: float, warmup: int = 20) -> tuple[float, float]:
    """CPU: (median ms per call, minor page faults per call) over at least min_s seconds and 10 calls, after a
    warm-up."""
    for _ in range(warmup):
        fn()
    faults0 = _minor_faults()
    times, start = [], time.perf_counter()
    while time.perf_counter() - start < min_s or len(times) < 10:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3, (_minor_faults() - faults0) / len(times)


def time_cuda(fn, min_s: float = 0.0) -> tuple[float, None]:
    """CUDA: triton.testing.do_bench's median ms (its own warm-up and synchronisation); no fault count."""
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")), None


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


# ---------------------------------------------------------------- measuring


def measure(torch, device: str, dtype, shapes, rounds: int, min_s: float) -> list[dict]:
    """One row per (shape, case): round medians of both sides, alternating, after a correctness check (fp32)."""
    timer = time_cuda if device == "cuda" else time_median
    ref_fns, fused_fns = functions("torch"), functions("auto")
    rows = []
    for shape in shapes:
        inp = inputs(shape, device=device, dtype=dtype)
        for name in CASES:
            ref, fused = case(name, ref_fns, inp), case(name, fused_fns, inp)
            if dtype == torch.float32:
                check_close(torch, fused(), ref())  # same numbers first, then time
            sides = {"ref": ([], []), "fused": ([], [])}
            for _ in range(rounds):
                for side, fn in (("ref", ref), ("fused", fused)):
                    ms, faults = timer(fn, min_s)
                    sides[side][0].append(ms)
                    sides[side][1].append(faults)
            rows.append(_row(shape, name, sides))
            r = rows[-1]
            print(f"{r['shape']:>10}  {name:<40} torch {r['ref']:8.4f} ms  fused {r['fused']:8.4f} ms  "
                  f"{r['ratio']:5.2f}x", file=sys.stderr)
    return rows


def _row(shape, name: str, sides: dict) -> dict:
    (ref_ms, ref_pf), (fused_ms, fused_pf) = sides["ref"], sides["fused"]
    r, f = statistics.median(ref_ms), statistics.median(fused_ms)
    ratios = [x / y for x, y in zip(ref_ms, fused_ms)]
    faults = None if ref_pf[0] is None else (statistics.median(ref_pf), statistics.median(fused_pf))
    return {"shape": "x".join(map(str, shape)), "case": name, "ref": r, "fused": f, "ratio": r / f,
            "spread": (min(ratios), max(ratios)), "faults": faults}


# ---------------------------------------------------------------- the report


def report(torch, K, rows: list[dict], args, setup: str) -> str:
    """The markdown of results/native-ops-cpu.md (CPU) or results/fused-ops-<gpu>.md (CUDA)."""
    worst = min(rows, key=lambda r: r["ratio"])
    label = "native" if args.device == "cpu" else "fused"
    lines = [
        "# Native CPU ops vs the torch references" if args.device == "cpu" else
        f"# Fused ops on {torch.cuda.get_device_name()} vs the torch references",
        "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        *(_cpu_lines(torch, K, args, setup) if args.device == "cpu" else _cuda_lines(torch, K, args)),
        "",
        f"| shape | case | torch ref median ms | {label} median ms | speedup | speedup range over rounds | "
        f"page faults/call ref, {label} |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        faults = "-" if r["faults"] is None else f"{r['faults'][0]:.1f}, {r['faults'][1]:.1f}"
        lines.append(f"| {r['shape']} | {r['case']} | {r['ref']:.4f} | {r['fused']:.4f} | {r['ratio']:.2f}x | "
                     f"{r['spread'][0]:.2f}-{r['spread'][1]:.2f}x | {faults} |")
    lines += ["", f"Smallest speedup: {worst['ratio']:.2f}x ({worst['case']}, {worst['shape']}); the issue's target "
              f"is 1.5x: {'met' if worst['ratio'] >= 1.5 else 'NOT met'} on every case.", ""]
    return "\n".join(lines)


def _command(args) -> str:
    omp = os.environ.get("OMP_NUM_THREADS")
    opts = "".join(f" {flag} {value}" for flag, value, default in (
        ("--device", args.device, "cpu"), ("--dtype", args.dtype, "float32"),
        ("--shapes", args.shapes, _shapes_arg(SHAPES))) if value != default)
    return (f"{'OMP_NUM_THREADS=' + omp + ' ' if omp else ''}python benchmarks/fused_ops.py{opts} --rounds "
            f"{args.rounds}" + (f" --min-s {args.min_s}" if args.device == "cpu" else "")
            + (" --no-pin-malloc" if args.no_pin_malloc else ""))


def _cpu_lines(torch, K, args, pinned: str) -> list[str]:
    info = K.native.build_info()
    omp = os.environ.get("OMP_NUM_THREADS")
    return [
        f"- device: {cpu_name()} ({os.cpu_count()} cores visible), OMP_NUM_THREADS={omp or 'unset'}, torch threads "
        f"{torch.get_num_threads()}",
        f"- versions: torch {torch.__version__}, Python {platform.python_version()}, native library configured "
        f"{info.get('configured', '?')} with {info.get('compiler', '?')} ({info.get('build_type', '?')}, OpenMP "
        f"{'on' if info.get('openmp') else 'off'}; no -march: at::vec kernels for "
        f"{info.get('cpu_capabilities', '?')}, this run uses {torch.ops.pdfast.cpu_capability()} like torch's own "
        f"{torch.backends.cpu.get_cpu_capability()})",
        f"- command: `{_command(args)}`",
        f"- method: {args.dtype}; per case the same inputs; {args.rounds} alternating rounds of >= {args.min_s} s per "
        "side, each a median of per-call perf_counter times after 20 warm-up calls; the table has the median of the "
        "round medians. torch = the `*_ref` functions called directly; native = the public functions in auto "
        "dispatch (PDFAST_KERNELS unset, so they pick native; shape checks, dispatch and the torch.ops call "
        "included). Every native result was checked against the reference first (rtol 1e-5).",
        f"- allocator: {pinned}; minor page faults per call are in the last column (interleaved runs with glibc's "
        "adaptive thresholds made the reference re-fault its temporaries on every call: see pin_malloc in "
        "benchmarks/fused_ops.py).",
    ]


def _cuda_lines(torch, K, args) -> list[str]:
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    checked = "checked against the reference first (rtol 1e-5)" if args.dtype == "float32" else \
        "not checked against the reference (bf16)"
    return [
        f"- device: {torch.cuda.get_device_name()}, CUDA {torch.version.cuda}",
        f"- versions: torch {torch.__version__}, triton {triton_version}, Python {platform.python_version()}; "
        f"auto dispatch on CUDA: {K.backends('cuda')}",
        f"- command: `{_command(args)}`",
        f"- method: {args.dtype}; per case the same inputs; {args.rounds} alternating rounds, each "
        "triton.testing.do_bench's median (warm-up 25 ms, 200 ms of repetitions); the table has the median of the "
        f"round medians. torch = the `*_ref` functions; fused = the public functions in auto dispatch, {checked}.",
    ]


# ---------------------------------------------------------------- command line


def _shapes_arg(shapes) -> str:
    return ",".join("x".join(map(str, s)) for s in shapes)


def parse_shapes(text: str) -> list[tuple[int, int, int, int]]:
    """'40x3x32x32,16x3x16x16' -> [(40, 3, 32, 32), (16, 3, 16, 16)]."""
    shapes = []
    for part in text.split(","):
        dims = tuple(int(d) for d in part.strip().split("x"))
        if len(dims) != 4 or min(dims) < 1:
            raise ValueError(f"{part!r} is not BxCxHxW")
        shapes.append(dims)
    return shapes


def default_out(torch, device: str) -> pathlib.Path:
    if device == "cpu":
        return RESULTS / "native-ops-cpu.md"
    slug = re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name().lower()).strip("-")
    return RESULTS / f"fused-ops-{slug}.md"


def backend_error(torch, K, device: str) -> str | None:
    """Why the fused side would not be what the table says it is (None when it is)."""
    if device == "cpu":
        if not K.native.available():
            return f"the native library is not available: {K.native.status()}"
        if set(K.backends("cpu").values()) != {"native"}:
            return f"auto dispatch does not pick native on CPU: {K.backends('cpu')}"
        return None
    if not torch.cuda.is_available():
        return "--device cuda: no CUDA device"
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        return "unset TRITON_INTERPRET: interpreted kernels are not worth timing"
    if "torch" in K.backends("cuda").values():
        return f"auto dispatch runs a torch reference on CUDA, there is nothing to compare: {K.backends('cuda')}"
    return None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="bfloat16: CUDA only")
    p.add_argument("--shapes", default=_shapes_arg(SHAPES), help="chain-state shapes BxCxHxW, comma-separated")
    p.add_argument("--rounds", type=int, default=5, help="alternating reference/fused rounds (default 5)")
    p.add_argument("--min-s", type=float, default=0.3, help="CPU: seconds per side per round (default 0.3)")
    p.add_argument("--out", type=pathlib.Path, default=None,
                   help="report (default results/native-ops-cpu.md, or results/fused-ops-<gpu>.md with --device cuda)")
    p.add_argument("--no-pin-malloc", action="store_true",
                   help="CPU: leave glibc malloc's adaptive thresholds alone (see pin_malloc)")
    args = p.parse_args(argv)
    try:
        shapes = parse_shapes(args.shapes)
    except ValueError as e:
        p.error(f"--shapes: {e}")
    if args.device == "cpu" and args.dtype != "float32":
        p.error("--dtype bfloat16 is for --device cuda (the native CPU ops are timed in fp32)")
    pinned = "adaptive (not pinned)" if args.no_pin_malloc or args.device != "cpu" else \
        (pin_malloc() or "adaptive (mallopt not available)")

    import torch

    if args.device == "cpu" and os.environ.get("OMP_NUM_THREADS") is None:
        print("note: OMP_NUM_THREADS is unset; the issue's numbers are single-threaded (OMP_NUM_THREADS=1)",
              file=sys.stderr)
    os.environ.pop("PDFAST_KERNELS", None)  # auto: what users get once the library is built / Triton is there
    os.environ.pop("PDFAST_FORCE_TRITON", None)
    import pdfast.kernels as K

    err = backend_error(torch, K, args.device)
    if err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    rows = measure(torch, args.device, getattr(torch, args.dtype), shapes, args.rounds, args.min_s)
    out = args.out or default_out(torch, args.device)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = report(torch, K, rows, args, pinned)
    out.write_text(text)
    print(text)
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
