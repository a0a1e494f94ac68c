"""Where one CPU inversion iteration spends its time, and what the fused ops' backends change in a whole inversion.

    OMP_NUM_THREADS=1 python benchmarks/profile_inversion.py [--arch demo --size 16 --batch 40 --k 10 --epochs 6]

Part A (torch.profiler, one iteration of the fast engine, torch backend): self CPU time by operator family:
network (conv, norm, activations, linear ...), the fused ops' work, the rest. Part B: the same short inversion
(pdfast.invert, analytic scales, no verdict) with PDFAST_KERNELS=torch and =native, alternating runs, medians,
with the trigger compared: the ops' share of an iteration bounds what any backend of them can save.
Writes benchmarks/results/profile-inversion-<device>.json and .md.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

import common
from common import header, md_table, write

OP_FAMILIES = {
    "network: convolution": ("conv", "mkldnn_convolution"),
    "network: group norm": ("group_norm", "native_group_norm"),
    "network: activation": ("silu", "sigmoid", "gelu"),
    "network: linear/matmul": ("addmm", "mm", "linear", "bmm", "matmul"),
    "network: upsample/pool": ("upsample", "pool", "interpolate"),
}


READING = """

Reading: the fused ops (update, shift loss) run about K + 1 times per iteration at 0.01-0.2 ms each on these shapes
(benchmarks/results/native-ops-cpu.md), against network calls of tens of milliseconds that make up the rest (part A:
convolutions alone are most of it), so they are well under 1% of an iteration and their 2-3x native speedup cannot
show in a whole inversion: part B's ratio is within its run-to-run noise (the min and median disagree in sign).
The native build pays where an op runs alone (the benchmark); on CPU the inversion's cost is the network."""


def family(name: str) -> str:
    n = name.lower()
    for fam, keys in OP_FAMILIES.items():
        if any(k in n for k in keys):
            return fam
    if "pdfast" in n:
        return "fused ops (native)"
    return "other (elementwise, copies, autograd bookkeeping, fused ops on the torch path)"


def profile_iteration(model, args) -> list[dict]:
    from torch.profiler import ProfilerActivity, profile

    from pdfast.engine.fast import FastEngine

    engine = FastEngine(model)
    inp = common.chain_inputs(model, args.batch, args.k)
    engine.loss_and_grad(**inp)  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        engine.loss_and_grad(**inp)
    totals: dict[str, float] = {}
    for ev in prof.key_averages():
        totals[family(ev.key)] = totals.get(family(ev.key), 0.0) + ev.self_cpu_time_total / 1000
    whole = sum(totals.values())
    return [{"part": k, "self CPU ms": round(v, 2), "share": f"{100 * v / whole:.1f}%"}
            for k, v in sorted(totals.items(), key=lambda kv: -kv[1])]


def inversion_pair(model, args) -> list[dict]:
    import pdfast
    from pdfast.kernels import native

    backends = ["torch"] + (["native"] if native.available() else [])
    times: dict[str, list[float]] = {b: [] for b in backends}
    triggers = {}
    opts = dict(steps=args.k, scales="analytic", epochs=args.epochs, refine_epochs=0, batch=args.batch,
                evaluate=False, seed=0)
    for r in range(args.rounds):
        for b in (backends if r % 2 == 0 else backends[::-1]):  # alternate the order: no first-run bias
            os.environ["PDFAST_KERNELS"] = b
            t0 = time.perf_counter()
            res = pdfast.invert(model, **opts)
            times[b].append(time.perf_counter() - t0)
            triggers[b] = res.trigger
    os.environ.pop("PDFAST_KERNELS", None)
    base = statistics.median(times["torch"])  # with other jobs on the machine: read the ratio, not the seconds
    rows = []
    for b in backends:
        med = statistics.median(times[b])
        rows.append({"backend": b, "median s": round(med, 3), "min s": round(min(times[b]), 3),
                     "speedup vs torch": f"{base / med:.3f}x",
                     "max |trigger - torch's|": float((triggers[b] - triggers["torch"]).abs().max())})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="demo")
    ap.add_argument("--size", type=int, default=16)
    ap.add_argument("--batch", type=int, default=40)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    model = common.build_model(args.arch, args.size, "cpu")
    os.environ["PDFAST_KERNELS"] = "torch"
    part_a = profile_iteration(model, args)
    part_b = inversion_pair(model, args)
    cfg = vars(args) | {"threads": torch.get_num_threads()}
    command = "OMP_NUM_THREADS=1 python benchmarks/profile_inversion.py " + " ".join(sys.argv[1:] if argv is None else argv)
    table = ("## A. One iteration of the fast engine (torch backend), self CPU time by operator family\n\n"
             + md_table(part_a, ["part", "self CPU ms", "share"])
             + f"\n\n## B. A whole inversion ({args.epochs} epochs, K = {args.k}, batch {args.batch}), "
               f"alternating backends, {args.rounds} rounds\n\n"
             + md_table(part_b, ["backend", "median s", "min s", "speedup vs torch", "max |trigger - torch's|"])
             + READING)
    write(f"profile-inversion-{common.device_slug('cpu')}", {"config": cfg, **header(), "command": command,
                                                         "iteration_profile": part_a, "inversion": part_b}, table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
