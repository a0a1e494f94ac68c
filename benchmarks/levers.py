"""Each CPU speed lever of the README job alone and all together, side by side in one run (issue 23).

    python benchmarks/levers.py [--rounds 2] [--steps 50] [--with-compile]

Every variant is the README job (`pdfast invert --steps 50` on the demo, cold scale cache, a fresh process) from this
tree, the settings given as options, so one checkout times every combination. Variants run interleaved (round r
runs them all, in an order rotated by r); medians per phase. Levers:

  verdict chain     the default --eval-steps 100 (the ancestral chain respaced to 100 steps) against the full 1000
  one thread        OMP_NUM_THREADS=1 instead of torch's default (every core)
  surrogate         150 fine-tune steps on 128 DDIM-25 images instead of 300 on 256 DDIM-50 (not taken)
  Adam steps        20 instead of 30 (not taken; both failed benchmarks/tolerance.py on a zoo v2 model)
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
from common import md_table
from readme_job import PHASES, ROOT, run_job

FULL_CHAIN = ["--eval-steps", "1000"]
CHEAP_SURROGATE = ["--surrogate-steps", "150", "--surrogate-n-images", "128", "--surrogate-pool-steps", "25"]


def variants(with_compile: bool) -> dict[str, dict]:
    """name -> {"extra": invert options, "threads": OMP_NUM_THREADS or None}: pdfast 0.1's job (the full verdict
    chain), the defaults (its 100-step chain), and the levers measured on top of them (the last two not taken:
    benchmarks/results/tolerance-probes.md)."""
    out = {"pdfast 0.1 (full verdict chain)": {"extra": FULL_CHAIN, "threads": None},
           "the defaults (verdict chain 100)": {"extra": [], "threads": None},
           "the defaults, one thread": {"extra": [], "threads": 1},
           "+ cheaper surrogate (not taken)": {"extra": CHEAP_SURROGATE, "threads": None},
           "+ 20 Adam steps (not taken)": {"extra": ["--epochs", "20"], "threads": None},
           "+ both (not taken)": {"extra": [*CHEAP_SURROGATE, "--epochs", "20"], "threads": None}}
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
    base = statistics.median(x["wall_s"] for x in runs[names[0]])  # pdfast 0.1's job
    rows = []
    for name in names:
        med = {ph: statistics.median(x[ph] for x in runs[name]) for ph in PHASES}
        rows.append({"variant": name, **{ph.removesuffix("_s"): round(v, 1) for ph, v in med.items()},
                     "wall / pdfast 0.1": f"{med['wall_s'] / base:.2f}",
                     "verdicts": " ".join(sorted({x["verdict"] for x in runs[name]})),
                     "options": " ".join(vs[name]["extra"]) + (" (OMP_NUM_THREADS=1)" if vs[name]["threads"] else "")})
    cols = ["variant", *(p.removesuffix("_s") for p in PHASES), "wall / pdfast 0.1", "verdicts", "options"]
    table = (md_table(rows, cols) + f"\n\nSeconds, medians of {a.rounds} interleaved rounds; each run a fresh process "
             "with a cold scale cache, the kernels on their torch references (as `pip install .` gives them).")
    common.publish("levers.py", "levers", argv, table, rows=rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
