"""Two CPU levers of the speed issue timed on the demo UNet alone: torch.compile (inductor) and channels-last.

    python benchmarks/micro_levers.py [--rounds 5]

torch.compile: the seconds to compile, cold (an empty inductor cache), the first shape (batch 48) and a second one
(batch 16), then ms per no-grad
call compiled against eager at each. channels-last: ms per forward-and-backward at batch 40 (the inversion's batch)
with the network and input in channels-last against contiguous, interleaved. Medians of --rounds. Writes
benchmarks/results/micro-levers-<device>.md/.json.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch

import common
from common import md_table

import pdfast


def ms_per_call(fn, n: int = 10) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1000


def compile_rows(net, shape) -> list[dict]:
    """Compile seconds and ms per call, compiled against eager, at batch 48 then 16 (no grad)."""
    cnet = torch.compile(net, dynamic=False)
    rows = []
    with torch.no_grad():
        for b in (48, 16):
            x, t = torch.randn(b, *shape), torch.full((b,), 500)
            t0 = time.perf_counter()
            cnet(x, t)
            compile_s = time.perf_counter() - t0
            eager = ms_per_call(lambda: net(x, t).sample)
            comp = ms_per_call(lambda: cnet(x, t).sample)
            rows.append({"lever": f"torch.compile, batch {b}", "cost": f"{compile_s:.1f} s to compile",
                         "ms before": round(eager, 1), "ms after": round(comp, 1), "ratio": f"{comp / eager:.2f}"})
    return rows


def channels_last_row(net, shape, rounds: int) -> dict:
    """ms per forward and backward at batch 40, contiguous against channels-last, interleaved."""
    x0, t = torch.randn(40, *shape), torch.full((40,), 980)

    def step(cl: bool):
        x = (x0.to(memory_format=torch.channels_last) if cl else x0.clone()).requires_grad_(True)
        return torch.autograd.grad(net(x, t).sample.mean(0).pow(2).mean(), x)[0]

    res: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(rounds):
        for cl in (False, True):
            net.to(memory_format=torch.channels_last if cl else torch.contiguous_format)
            res[cl].append(ms_per_call(lambda: step(cl), n=5))
    net.to(memory_format=torch.contiguous_format)
    before, after = statistics.median(res[False]), statistics.median(res[True])
    return {"lever": "channels-last, forward + backward, batch 40", "cost": "-", "ms before": round(before, 1),
            "ms after": round(after, 1), "ratio": f"{after / before:.2f}"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args(argv)
    # a cold compile, as a user's first run meets it: inductor's on-disk cache in a new empty folder
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="pdfast-inductor-")
    model = pdfast.load_model(pdfast.demo_path())
    net = model.net.eval().requires_grad_(False)
    rows = [channels_last_row(net, model.shape, a.rounds), *compile_rows(net, model.shape)]
    table = (md_table(rows, ["lever", "cost", "ms before", "ms after", "ratio"])
             + f"\n\nThe demo UNet (637k parameters, 16x16), fp32, torch's own thread count; medians of {a.rounds} "
             "interleaved rounds for channels-last, 10 calls after one warm call for compile, whose cost is a cold "
             "compile (an empty inductor cache).")
    common.publish("micro_levers.py", "micro-levers", argv, table, rows=rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
