"""Fused Triton kernels against their torch references, timed side by side in one run.

    python benchmarks/bench_kernels.py --device cuda            # triton.testing.do_bench, fused and reference
    python benchmarks/bench_kernels.py --device cpu             # perf_counter loop, reference only (CPU path)

Writes benchmarks/results/kernels-<device>-<date>.json (device name, torch/triton versions, date, config, ms per case)
and prints a markdown table. Default shape: batch 40 x 3x32x32, the inversion batch of docs/method.md section 5.
Report ratios from one run, never absolute CPU timings across runs (2-core machines jump 100x under OpenMP
oversubscription: run with OMP_NUM_THREADS=1 there).
"""
from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import pathlib
import statistics
import sys
import time

from bench_native import cpu_name

ROOT = pathlib.Path(__file__).resolve().parents[1]


def time_cuda(fn) -> float:
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median"))


def time_cpu(fn, warmup: int = 20, min_s: float = 0.5) -> float:
    for _ in range(warmup):
        fn()
    times, start = [], time.perf_counter()
    while time.perf_counter() - start < min_s or len(times) < 10:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def cases(K, torch, device, dtype, batch, channels, size):
    """(name, reference callable, fused callable) per timed case, on one set of inputs."""
    gen = torch.Generator(device=device).manual_seed(0)

    def randn(*shape, grad=False):
        return torch.randn(shape, generator=gen, device=device, dtype=dtype).requires_grad_(grad)

    shape = (batch, channels, size, size)
    x, eps, noise, g = randn(*shape, grad=True), randn(*shape, grad=True), randn(*shape, grad=True), randn(*shape)
    delta = randn(1, channels, size, size, grad=True)
    eps_hat = randn(*shape, grad=True)
    c = (1.0050, 0.0200, 0.1400)  # c1, c2, sigma near t = T for the linear DDPM schedule

    def update_fwd(f):
        def run():
            with torch.no_grad():
                return f(x, eps, *c, noise=noise)
        return run

    def update_bwd(f):
        return lambda: torch.autograd.grad(f(x, eps, *c, noise=noise), (x, eps, noise), g)

    def loss_fwd_bwd(f, norm):
        return lambda: torch.autograd.grad(f(eps_hat, delta, 0.5, norm), (eps_hat, delta))

    def lstsq(f):
        def run():
            with torch.no_grad():
                return f(eps_hat, delta)
        return run

    return [
        ("ddpm_update fwd (noise)", update_fwd(K.ddpm_update_ref), update_fwd(K.ddpm_update)),
        ("ddpm_update fwd+bwd (grad x, eps, noise)", update_bwd(K.ddpm_update_ref), update_bwd(K.ddpm_update)),
        ("shift_loss l1 fwd+bwd", loss_fwd_bwd(K.shift_loss_ref, "l1"), loss_fwd_bwd(K.shift_loss, "l1")),
        ("shift_loss l2 fwd+bwd", loss_fwd_bwd(K.shift_loss_ref, "l2"), loss_fwd_bwd(K.shift_loss, "l2")),
        ("lstsq_scale fwd", lstsq(K.lstsq_scale_ref), lstsq(K.lstsq_scale)),
    ]


def device_name(torch, device: str) -> str:
    return torch.cuda.get_device_name() if device == "cuda" else cpu_name()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--batch", type=int, default=40)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--out", type=pathlib.Path, default=None,
                   help="result JSON (default benchmarks/results/kernels-<device>-<date>.json)")
    args = p.parse_args(argv)

    import torch

    if args.device == "cuda":
        if not torch.cuda.is_available():
            p.error("--device cuda: no CUDA device")
        if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
            p.error("unset TRITON_INTERPRET: interpreted kernels are not worth timing")
    elif args.dtype == "bfloat16":
        print("note: bf16 on CPU times the reference in its fp32 upcast path", file=sys.stderr)
    if args.device == "cpu":
        os.environ.pop("PDFAST_FORCE_TRITON", None)  # the CPU timing is of the reference path only

    K = importlib.import_module("pdfast.kernels")
    dtype = getattr(torch, args.dtype)
    date = datetime.date.today().isoformat()
    out = args.out or ROOT / "benchmarks" / "results" / f"kernels-{args.device}-{date}.json"
    timer = time_cuda if args.device == "cuda" else time_cpu

    rows = []
    for name, ref, fused in cases(K, torch, args.device, dtype, args.batch, args.channels, args.size):
        ref_ms = timer(ref)
        fused_ms = timer(fused) if args.device == "cuda" else None
        rows.append({"case": name, "reference_ms": round(ref_ms, 5),
                     "fused_ms": None if fused_ms is None else round(fused_ms, 5),
                     "speedup": None if fused_ms is None else round(ref_ms / fused_ms, 3)})
        print(f"{name}: done", file=sys.stderr)

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    result = {
        "schema": "pdfast.bench.kernels/1",
        "date": date,
        "device": device_name(torch, args.device),
        "torch": torch.__version__,
        "triton": triton_version,
        "config": {**{k: v for k, v in vars(args).items() if k != "out"},
                   "shape": [args.batch, args.channels, args.size, args.size],
                   "timer": "triton.testing.do_bench median" if args.device == "cuda" else "perf_counter median",
                   "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")},
        "results": rows,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")

    print(f"\n{result['device']}, torch {result['torch']}, triton {triton_version}, {args.dtype}, "
          f"shape {result['config']['shape']}, {date}\n")
    print("| case | reference ms | fused ms | speedup |")
    print("|---|---:|---:|---:|")
    for r in rows:
        fused = "n/a" if r["fused_ms"] is None else f"{r['fused_ms']:.4f}"
        speed = "n/a" if r["speedup"] is None else f"{r['speedup']:.2f}x"
        print(f"| {r['case']} | {r['reference_ms']:.4f} | {fused} | {speed} |")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
