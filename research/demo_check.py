"""Issue 22's demo check: does `pdfast invert --steps 10` with the shipped defaults fire the embedded demo model
(exact ASR at least 0.8 over 64 samples) and call it backdoored? Per inversion seed:

    pdfast invert --steps 10 --seed S --out OUT/seedS --json
    pdfast evaluate --trigger OUT/seedS/trigger.safetensors -n 64 --seed 0 --json      (the full 1000-step chain)

beside the demo's true trigger and plain noise on the same 64 noises (pdfast/demo/RESULTS.json).

    OMP_NUM_THREADS=1 python research/demo_check.py [--seeds 0,1]

Writes research/results/demo-check.json and .md (the triggers under research/results/demo-check/).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import stats  # noqa: E402
from quality.base import write_json  # noqa: E402
from zoo_report import pdfast_exe, run_json  # noqa: E402

OUT = HERE / "results" / "demo-check"


def check(seed: int) -> dict:
    """One seed: the inversion's verdict and selection, and its trigger's exact ASR over 64 full-chain samples."""
    out = OUT / f"seed{seed}"
    inv = [pdfast_exe(), "invert", "--steps", "10", "--seed", str(seed), "--out", str(out), "--json", "--no-progress"]
    rep, inv_s = run_json(inv)
    ev_cmd = [pdfast_exe(), "evaluate", "--trigger", str(out / "trigger.safetensors"), "-n", "64", "--seed", "0",
              "--json"]
    ev, ev_s = run_json(ev_cmd)
    return {"seed": seed, "commands": [" ".join(inv[1:]), " ".join(ev_cmd[1:])], "seconds": [inv_s, ev_s],
            "verdict": rep["metrics"]["detection"]["verdict"], "trigger_miss": rep["metrics"]["trigger_miss"],
            "selection": rep.get("selection"), "exact_hits": round(ev["asr"] * 64), "asr_paper": ev["asr_paper"],
            "plain_hits": round(ev["clean_asr"] * 64), "l2_to_truth": ev.get("l2")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1")
    args = ap.parse_args(argv)
    rows = [check(int(s)) for s in args.seeds.split(",")]
    truth = json.loads((HERE.parent / "pdfast" / "demo" / "RESULTS.json").read_text())
    write_json(OUT.with_suffix(".json"), {"rows": rows, "demo_results": truth})
    lines = ["| seed | verdict | trigger_miss | chosen stage | exact hits /64 [Wilson 95%] | ASR at 0.1 | plain noise "
             "hits /64 | L2 to the truth | invert s |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lo, hi = stats.wilson(r["exact_hits"], 64)
        lines.append(f"| {r['seed']} | {r['verdict']} | {r['trigger_miss']:.3f} | "
                     f"{(r['selection'] or {}).get('chosen')} | {r['exact_hits']} [{lo:.2f}, {hi:.2f}] | "
                     f"{r['asr_paper']:.2f} | {r['plain_hits']} | {r['l2_to_truth']:.2f} | {r['seconds'][0]} |")
    OUT.with_suffix(".md").write_text(
        "# The demo check (issue 22): `pdfast invert --steps 10` with the shipped defaults\n\nWritten by "
        f"`OMP_NUM_THREADS=1 python research/demo_check.py --seeds {args.seeds}` (research/demo_check.py). Exact ASR "
        "(MSE < 0.02 in [0, 1]) of the inverted trigger over 64 samples of the full 1000-step chain (seed 0), plain "
        "noise on the same noises beside it; the true trigger's figures are in pdfast/demo/RESULTS.md. CPU, one "
        "thread.\n\n" + "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
