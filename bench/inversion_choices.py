"""Where the paper is silent: norm (L1/L2), the noise batches (antithetic pairs, fresh, fixed), the objective
(relative or absolute), trigger initialisation, and the loss mode (one sampled step per iteration, as in the
paper, or all K steps in one pass). Each choice is measured by the trigger it reaches on a backdoored model (ASR,
L2 to the truth, uniformity; the same for the trigger's pattern), all other settings at the defaults.

  python bench/inversion_choices.py --model pdfast/demo/model --steps 10
"""
from __future__ import annotations

import argparse
import sys

from common import header, md_table, write

GRID = [
    {},  # the defaults
    {"noise": "fresh", "objective": "absolute", "refine_epochs": 0},  # the defaults before bench/flat_shift.py
    {"refine_epochs": 0},
    {"noise": "fresh"},
    {"objective": "absolute"},
    {"norm": "l2"},
    {"noise": "fixed"},
    {"init": "zeros"},
    {"lr": 0.05},
]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--scales", default="surrogate")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--name", default="demo-inversion-choices")
    a = ap.parse_args(argv)

    import pdfast
    from pdfast.demo import demo_path

    model = pdfast.load_model(a.model or demo_path(), device=a.device)
    rows = []
    for seed in [int(s) for s in a.seeds.split(",")]:
        for over in GRID:
            res = pdfast.invert(model, steps=a.steps, scales=a.scales, seed=seed, device=a.device, **over)
            m = res.metrics
            c = res.config
            rows.append({"change": ", ".join(f"{k}={v}" for k, v in over.items()) or "defaults", "seed": seed,
                         "norm": c.norm, "noise": c.noise, "objective": c.objective, "refine": c.refine_epochs,
                         "init": c.init,
                         "loss_steps": c.loss_steps, "epochs": c.epochs, "lr": c.lr, "asr": m.get("asr"),
                         "l2": m.get("l2"), "uniformity": m["uniformity"], "pattern_asr": m.get("pattern_asr"),
                         "pattern_uniformity": m["pattern_uniformity"], "network_calls": res.timings["network_calls"],
                         "inversion_s": res.timings["inversion_seconds"]})
            print(rows[-1], file=sys.stderr)
    table = md_table(rows, ["change", "seed", "norm", "noise", "objective", "refine", "init", "loss_steps", "epochs", "lr",
                            "asr", "l2", "uniformity", "pattern_asr", "pattern_uniformity", "network_calls",
                            "inversion_s"])
    obj = {**header(), "command": "python bench/inversion_choices.py " + " ".join(argv or sys.argv[1:]),
           "model": str(model.source), "K": a.steps, "rows": rows}
    write(a.name, obj, table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
