"""PureDiffusion against Elijah on one backdoored model, side by side in one run.

Writes bench/results/<name>.json/.md with ASR, L2 to the ground truth, uniformity and time of each method, and
the surrogate and analytic lambda tables side by side.

  python bench/compare_methods.py                    # the embedded demo model, K = 10
  python bench/compare_methods.py --model DIR --ks 10,50 --name mymodel-methods
"""
from __future__ import annotations

import argparse
import sys

import torch

from common import header, md_table, write


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model folder (default: the embedded demo model)")
    ap.add_argument("--ks", default="10", help="comma-separated K values for PureDiffusion")
    ap.add_argument("--seeds", default="0", help="comma-separated inversion seeds")
    ap.add_argument("--engine", default="reference")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--name", default="demo-methods")
    a = ap.parse_args(argv)

    import pdfast
    from pdfast.demo import demo_path

    torch.set_num_threads(max(1, torch.get_num_threads()))
    model = pdfast.load_model(a.model or demo_path(), device=a.device)
    runs = [("elijah", 1, "elijah-0.5")]
    for k in [int(x) for x in a.ks.split(",")]:
        runs += [("puredif", k, "surrogate"), ("puredif", k, "analytic")]
    rows, tables = [], {}
    for seed in [int(s) for s in a.seeds.split(",")]:
        for method, k, scales in runs:
            res = pdfast.invert(model, method=method, steps=k, scales="surrogate" if method == "elijah" else scales,
                                engine=a.engine, seed=seed, device=a.device)
            m = res.metrics
            rows.append({"method": method, "K": k, "scales": res.scales.source, "seed": seed, "asr": m.get("asr"),
                         "l2": m.get("l2"), "uniformity": m["uniformity"], "pattern_asr": m.get("pattern_asr"),
                         "pattern_l2": m.get("pattern_l2"), "pattern_uniformity": m["pattern_uniformity"],
                         "kl_mean": m["kl_mean"], "verdict": m["detection"]["verdict"],
                         "inversion_s": res.timings["inversion_seconds"], "scales_s": res.timings["scales_seconds"],
                         "total_s": res.timings["total_seconds"]})
            print(rows[-1], file=sys.stderr)
            if res.scales.source == "surrogate":
                tables[k] = res.scales.to_dict()
    table = md_table(rows, ["method", "K", "scales", "seed", "asr", "l2", "uniformity", "pattern_asr", "pattern_l2",
                            "pattern_uniformity", "kl_mean", "verdict", "inversion_s", "scales_s", "total_s"])
    for k, t in tables.items():
        table += f"\n\nlambda tables, K = {k} (surrogate calibrated vs analytic BadDiffusion rho_t):\n\n"
        table += md_table([{"step": i, "t": t["timesteps"][i], "surrogate": t["lambda"][i], "analytic": t["analytic"][i]}
                           for i in range(len(t["lambda"]))], ["step", "t", "surrogate", "analytic"])
    obj = {**header(), "command": "python bench/compare_methods.py " + " ".join(argv or sys.argv[1:]),
           "model": str(model.source), "rows": rows, "scales": tables}
    j, md = write(a.name, obj, table)
    print(table)
    print(f"wrote {j} and {md}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
