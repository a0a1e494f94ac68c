"""Each CPU speed lever of the README job alone and all together, side by side in one run (issue 23).

    python benchmarks/levers.py [--rounds 2] [--steps 50] [--with-compile]

Every variant is the README job (`pdfast invert --steps 50` on the demo, cold scale cache, a fresh process) from this
tree; pdfast 0.1's settings are given as options, so one checkout times every combination. Variants run interleaved
(round r runs them all, in an order rotated by r); medians per phase. Levers:

  verdict chain     --eval-steps 100 (the ancestral chain respaced to 100 steps) instead of the full 1000
  surrogate         150 fine-tune steps on 128 DDIM-25 images instead of 300 on 256 DDIM-50
  Adam steps        20 instead of 30 (measured, not taken: benchmarks/tolerance.py)
  one thread        OMP_NUM_THREADS=1 instead of torch's default (every core)
  compile           --compile on: inductor's CPU backend, compile time included (cold: every shape compiles)

Writes benchmarks/results/levers-<device>.md/.json.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import common
from common import header, md_table, write
from readme_job import PHASES, ROOT, run_job

V01 = {"eval": ["--eval-steps", "1000"],
       "surrogate": ["--surrogate-steps", "300", "--surrogate-n-images", "256", "--surrogate-pool-steps", "50"]}


def variants(with_compile: bool) -> dict[str, dict]:
    """name -> {"extra": invert options, "threads": OMP_NUM_THREADS or None}."""
    def without(*levers):  # pdfast 0.1's settings except the given levers (which take today's defaults)
        return [a for k, v in V01.items() if k not in levers for a in v]

    out = {"pdfast 0.1 settings": {"extra": without(), "threads": None},
           "verdict chain 100 alone": {"extra": without("eval"), "threads": None},
           "surrogate 150/128/25 alone": {"extra": without("surrogate"), "threads": None},
           "both (the defaults)": {"extra": [], "threads": None},
           "the defaults + 20 Adam steps (not taken)": {"extra": ["--epochs", "20"], "threads": None},
           "the defaults, one thread": {"extra": [], "threads": 1}}
    if with_compile:
        out["the defaults + compile on"] = {"extra": ["--compile", "on"], "threads": None}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--with-compile", action="store_true")
    a = ap.parse_args(argv)
    vs = variants(a.with_compile)
    names = list(vs)
    runs: dict[str, list[dict]] = {n: [] for n in names}
    for r in range(a.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            with tempfile.TemporaryDirectory() as d:
                runs[name].append(run_job(ROOT, a.steps, Path(d), threads=vs[name]["threads"],
                                          extra=tuple(vs[name]["extra"])))
            print(f"round {r} {name}: {runs[name][-1]['wall_s']:.1f} s", file=sys.stderr)
    base = statistics.median(x["wall_s"] for x in runs[names[0]])
    rows = []
    for name in names:
        med = {ph: statistics.median(x[ph] for x in runs[name]) for ph in PHASES}
        rows.append({"variant": name, **{ph.removesuffix("_s"): round(v, 1) for ph, v in med.items()},
                     "wall / pdfast 0.1": f"{med['wall_s'] / base:.2f}",
                     "verdicts": " ".join(sorted({x["verdict"] for x in runs[name]})),
                     "options": " ".join(vs[name]["extra"]) + (" (OMP_NUM_THREADS=1)" if vs[name]["threads"] else "")})
    cols = ["variant", *(p.removesuffix("_s") for p in PHASES), "wall / pdfast 0.1", "verdicts", "options"]
    cmd = "python benchmarks/levers.py " + " ".join(sys.argv[1:] if argv is None else argv)
    table = (md_table(rows, cols) + f"\n\nSeconds, medians of {a.rounds} interleaved rounds; each run a fresh process "
             "with a cold scale cache, the kernels on their torch references (as `pip install .` gives them).")
    write(f"levers-{common.device_slug('cpu')}", {**header(), "command": cmd, "rows": rows}, table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
