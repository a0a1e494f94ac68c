"""What the verdict's no-trigger baseline costs: the verdict's sampling (pdfast.detection.judge: 16 images from
eps + trigger and 16 from eps + pattern, one chain on the fast engine) with and without the third, plain-noise
chain, on the embedded demo, timed interleaved (A B A B ...) so load from other jobs hits both alike.

    OMP_NUM_THREADS=1 python benchmarks/verdict_plain_cost.py [--repeats 3]
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    import pdfast
    from pdfast.chain import DDPMSampler
    from pdfast.engine import make_engine
    from pdfast.loading import load_ground_truth

    from pdfast.demo import demo_path

    model = pdfast.load_model(demo_path())
    g, _ = load_ground_truth(model)
    pattern = g - g.mean(dim=(-2, -1), keepdim=True)
    engine, sampler = make_engine("fast", model), DDPMSampler(model.schedule, clip_sample=False)
    times = {"trigger + pattern": [], "trigger + pattern + plain": []}
    for _ in range(args.repeats):
        for name, triggers in (("trigger + pattern", [g, pattern]), ("trigger + pattern + plain", [g, pattern, None])):
            t0 = time.perf_counter()
            engine.sample_together(16, triggers, seed=0, sampler=sampler)
            times[name].append(time.perf_counter() - t0)
    a, b = (statistics.median(v) for v in times.values())
    print(f"| {platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} "
          f"thread(s) | {a:.1f} s | {b:.1f} s | x{b / a:.2f} | median of {args.repeats}, interleaved |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
