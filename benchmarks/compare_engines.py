"""The trigger the fast engine finds against the reference engine's, on the same model, seed and settings.

Issue 4's bar: L2 to the ground truth within 2% and the same ASR. On CPU the fast engine runs fp32 (same
gradients to 1e-5); on a GPU it runs the compiled bf16 network, which is what this comparison is for.

  python benchmarks/compare_engines.py --device cpu --steps 10
  python benchmarks/compare_engines.py --device cuda --steps 10     # part of benchmarks/gpu_check.sh
"""
from __future__ import annotations

import argparse
import sys

from common import device_slug, header, md_table, today, write


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model folder (default: the embedded demo model)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--scales", default="analytic", help="scale source (analytic: no calibration time in the race)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args(argv)

    import pdfast
    from pdfast.demo import demo_path

    model = pdfast.load_model(a.model or demo_path(), device=a.device)
    rows = []
    for engine in ("reference", "fast"):
        res = pdfast.invert(model, steps=a.steps, scales=a.scales, engine=engine, seed=a.seed, device=a.device)
        m = res.metrics
        rows.append({"engine": engine, "dtype": res.engine.get("dtype"), "asr": m.get("asr"), "l2": m.get("l2"),
                     "uniformity": m["uniformity"], "final_loss": res.losses[-1],
                     "inversion_s": res.timings["inversion_seconds"], "sampling_s": m["sampling_seconds"],
                     "ms_per_chain_step": res.timings["ms_per_chain_step"]})
        print(rows[-1], file=sys.stderr)
    ref, fast = rows
    verdict = {"l2_rel_diff": abs(fast["l2"] - ref["l2"]) / ref["l2"] if ref.get("l2") else None,
               "same_asr": fast.get("asr") == ref.get("asr")}
    verdict["pass"] = bool(verdict["l2_rel_diff"] is not None and verdict["l2_rel_diff"] <= 0.02 and verdict["same_asr"])
    table = md_table(rows, list(rows[0])) + f"\n\nL2 relative difference {verdict['l2_rel_diff']}, same ASR " \
        f"{verdict['same_asr']}: {'PASS' if verdict['pass'] else 'FAIL'} (bar: within 2%, same ASR)\n"
    h = header()
    obj = {**h, "command": "python benchmarks/compare_engines.py " + " ".join(argv or sys.argv[1:]),
           "model": str(model.source), "K": a.steps, "rows": rows, "verdict": verdict}
    write(f"engines-{device_slug(a.device)}-{today()}", obj, table)
    print(table)
    return 0 if verdict["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
