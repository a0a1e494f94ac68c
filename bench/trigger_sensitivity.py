"""How far the README job's trigger moves when only the arithmetic of the inversion changes (issue 10, item 1).

Item 1 asks for the README job (`pdfast invert --steps 50` on the demo model, cold cache) at half its wall time with
the same fp32 trigger (to 1e-6). This measures the two sides of that bar in one run, on the current defaults:

- the phases of the job (start-up, surrogate calibration, inversion, verdict sampling), cold cache, torch kernels,
  one thread: the share of the wall time that is network arithmetic feeding the trigger (calibration + inversion);
- the trigger's sensitivity: the same job again with the scale table of the first run (so the surrogate's lambdas
  are bit-identical) and one arithmetic change inside the inversion each: the native fused ops instead of their
  torch references (same formulas, other rounding), and two threads instead of one (other reduction splits).
  Reported: max |trigger - reference|, the cosine of their patterns, the verdict, the inversion seconds.

If a change that only reorders floating-point sums moves the trigger by more than 1e-6, then every speed-up of the
calibration or the inversion (a faster convolution, fusion, bf16, compilation, threads) moves it too, and the job
can only get faster in the phases that do not feed the trigger (start-up, verdict sampling).

    OMP_NUM_THREADS=1 python bench/trigger_sensitivity.py [--steps 50] [--variants ref,again,native,threads2]

Writes bench/results/trigger-sensitivity-<device>.md/.json.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import common
from common import header, md_table, write
from pdfast.metrics import pattern_cosine
from readme_job import ROOT, run_job


VARIANTS = {"ref": ("reference: torch ops, 1 thread (cold cache)", "torch", 1),
            "again": ("torch ops, 1 thread again (warm scale cache)", "torch", 1),
            "native": ("native fused ops, 1 thread", "native", 1),
            "threads2": ("torch ops, 2 threads", "torch", 2)}


def report(rows: list[dict], cmd: str) -> str:
    """The table so far and its reading; written after every run, so a killed run keeps what it measured."""
    r0 = rows[0]
    fixed = r0["calibration s"] + r0["inversion s"]
    reading = (f"\n\nThe reference job: {r0['wall s']} s wall, of which calibration + inversion {fixed:.1f} s "
               f"({100 * fixed / r0['wall s']:.0f}%) compute the trigger. Half the wall time is "
               f"{r0['wall s'] / 2:.1f} s. The later runs reuse the first run's scale table (identical lambdas), so "
               "their trigger differences come from the inversion's arithmetic alone; 'again' shows the job is "
               "deterministic when nothing changes. Other jobs shared the 2 cores: read shares and ratios, not "
               "seconds.")
    table = md_table(rows, list(rows[0])) + reading
    write(f"trigger-sensitivity-{common.device_slug('cpu')}", {**header(), "command": cmd, "rows": rows,
                                                              "fixed_share": fixed / r0["wall s"]}, table)
    return table


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--variants", default="ref,again,native,threads2",
                    help=f"comma-separated, of {','.join(VARIANTS)}; the first is the reference (run cold)")
    a = ap.parse_args(argv)
    from pdfast.kernels import native

    names = [v for v in a.variants.split(",") if v]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown or not names:
        print(f"error: unknown variant {unknown[0] if unknown else '(none)'}; choose from {', '.join(VARIANTS)}",
              file=sys.stderr)
        return 2
    if "native" in names and not native.available():
        print("note: the native ops are not built (python -m pdfast.kernels.native_build); skipping that variant",
              file=sys.stderr)
        names.remove("native")
    cmd = "OMP_NUM_THREADS=1 python bench/trigger_sensitivity.py " + " ".join(sys.argv[1:] if argv is None else argv)
    rows, ref, table = [], None, ""
    with tempfile.TemporaryDirectory() as d:
        cache = Path(d) / "scale-cache"
        for i, key in enumerate(names):
            name, kernels, threads = VARIANTS[key]
            work = Path(d) / f"run{i}"
            work.mkdir()
            r = run_job(ROOT, a.steps, work, kernels=kernels, threads=threads, cache=cache)
            if ref is None:
                ref = r
            diff = float((r["trigger"] - ref["trigger"]).abs().max())
            rows.append({"run": name, "wall s": round(r["wall_s"], 1), "calibration s": round(r["calibration_s"], 1),
                         "inversion s": round(r["inversion_s"], 1), "sampling s": round(r["sampling_s"], 1),
                         "startup s": round(r["startup_s"], 1), "max abs diff to reference": f"{diff:.3g}",
                         "pattern cos to reference": f"{pattern_cosine(r['trigger'], ref['trigger']):.4f}",
                         "verdict": r["verdict"]})
            print(f"{name}: wall {r['wall_s']:.1f} s, max diff {diff:.3g}", file=sys.stderr)
            shutil.rmtree(work)
            table = report(rows, cmd)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
