"""Issue 22 probe: does the poisoned-pair residual R(g, y) (pdfast.pair, docs/method.md 5.11) single out a
VillanDiffusion-ODE backdoor's trigger and target, and does its search find them?

1. R on one fixed batch (64 noises, seed 0, sample b at the b-th of 64 evenly spaced t in [0.12 T, 0.6 T)) at the
   truth (g, y), at g's flat part, at other trigger images (with y), at g with other targets, and a plain-noise
   reference (g = 0 cannot be scored: R divides by c_t g), on the backdoored model and on its clean base;
2. pdfast.pair.pair_search (300 Adam steps, seed 0) from -U(0, 1) and from each start of the patch grid, on both
   models: R of the result on the same fixed batch, its pattern cosine and L2 to the truth, its target's MSE to the
   truth's in [0, 1], and on the backdoored model its exact ASR over 64 samples of the family's own sampler
   (pdfast.evaluation.evaluate_trigger, seed 0) beside plain noise's.

    OMP_NUM_THREADS=1 python research/pair_probe.py BACKDOOR_DIR CLEAN_DIR [--epochs 300]

Writes research/results/pair-probe.md and .json (about 15 minutes on one core at 16x16).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from quality.base import git_info, write_json  # noqa: E402
from quality.tables import md_table  # noqa: E402

OTHER_TRIGGERS = ("HEART", "BOX_14", "STOP_SIGN_14")
OTHER_TARGETS = ("HAT", "CORNER")


def candidates(model, family, g, y) -> dict:
    """name -> (trigger, target) scored in part 1."""
    from pdfast import metrics
    from pdfast.patterns import load_pattern

    c, s = model.channels, model.sample_size
    out = {"truth": (g, y), "flat part, y": (metrics.flat_part(g), y)}
    out.update({f"{n}, y": (family.shift(load_pattern(n, s, c, kind="trigger")), y) for n in OTHER_TRIGGERS})
    out.update({f"g, {n}": (g, load_pattern(n, s, c, kind="target")) for n in OTHER_TARGETS})
    return out


def starts(model) -> dict:
    import torch

    from pdfast.patterns import patch_starts

    uniform = -torch.rand(model.shape, generator=torch.Generator().manual_seed(0))
    return {"uniform": uniform, **{f"patch-{k}": v for k, v in patch_starts(model.channels, model.sample_size).items()}}


def search_row(model, family, start, g, y, epochs: int, fire: bool) -> dict:
    import torch

    from pdfast import metrics
    from pdfast.evaluation import evaluate_trigger
    from pdfast.pair import pair_score, pair_search

    t0 = time.time()
    g2, y2, _ = pair_search(model, family, family.shift(start), epochs, torch.Generator().manual_seed(0), "cpu")
    g2, y2 = g2.reshape(model.shape), y2.reshape(model.shape)
    row = {"R": pair_score(model, family, g2, y2), "cos": metrics.pattern_cosine(g2, g),
           "l2": metrics.l2_distance(g2, g), "target_mse": float(((y2 - y) / 2).pow(2).mean()),
           "seconds": round(time.time() - t0)}
    if fire:
        ev = evaluate_trigger(model, g2, target=y, n=64, seed=0, clean=True)
        row.update(exact_asr=ev["asr"], plain_asr=ev.get("clean_asr"))
    return row


def run(backdoor: str, clean: str, epochs: int) -> dict:
    from pdfast.families import family_of
    from pdfast.loading import load_ground_truth, load_model
    from pdfast.pair import pair_score

    bd, cl = load_model(backdoor).frozen(), load_model(clean).frozen()
    family = family_of(bd)
    g, y = (v.reshape(bd.shape) for v in load_ground_truth(bd))
    fixed = {name: {"backdoor": pair_score(bd, family, a, b), "clean": pair_score(cl, family, a, b)}
             for name, (a, b) in candidates(bd, family, g, y).items()}
    searches = {}
    for name, s in starts(bd).items():
        searches[name] = {"backdoor": search_row(bd, family, s, g, y, epochs, True),
                          "clean": search_row(cl, family, s, g, y, epochs, False)}
        print(f"[pair-probe] {name}: {searches[name]}", flush=True)
    return {"backdoor": Path(backdoor).name, "clean": Path(clean).name, "family": family.describe(),
            "epochs": epochs, "fixed": fixed, "searches": searches}


def report(res: dict, command: str) -> str:
    f = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    fixed = [[k, f(v["backdoor"]), f(v["clean"])] for k, v in res["fixed"].items()]
    rows = []
    for k, v in res["searches"].items():
        b, c = v["backdoor"], v["clean"]
        rows.append([k, f(b["R"]), f"{b['cos']:.3f}", f"{b['l2']:.2f}", f(b["target_mse"]),
                     f"{round(b['exact_asr'] * 64)}/64 (plain {round(b['plain_asr'] * 64)}/64)", f(c["R"]),
                     f"{c['cos']:.3f}"])
    return "\n".join([
        f"# The poisoned-pair residual on {res['backdoor']} and its clean base {res['clean']}", "",
        f"Written by `{command}` ({res['family']}; docs/method.md 5.11). R: the relative residual of the family's "
        f"closed-form training pair on one fixed batch (64 noises, seed 0, t evenly spaced in the search's range); "
        "lower is what the search prefers. Exact ASR: MSE < 0.02 to the target in [0, 1] over 64 samples of the "
        "family's own sampler (seed 0), plain noise (seed 1) beside it.", "",
        "## R at given (trigger, target)", "", md_table(fixed, ["(g, y)", "R backdoor", "R clean base"]), "",
        f"## The search ({res['epochs']} Adam steps, seed 0) from each start", "",
        md_table(rows, ["start", "R", "cos to truth", "L2", "target MSE", "exact hits", "R (clean base)",
                        "cos (clean base)"]), ""])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("backdoor")
    ap.add_argument("clean")
    ap.add_argument("--epochs", type=int, default=300)
    ap.add_argument("--out", default=str(HERE / "results" / "pair-probe"))
    args = ap.parse_args(argv)
    command = "python research/pair_probe.py " + " ".join(sys.argv[1:] if argv is None else argv)
    res = {**run(args.backdoor, args.clean, args.epochs), "git": git_info(), "command": command}
    out = Path(args.out)
    write_json(out.with_suffix(".json"), res)
    out.with_suffix(".md").write_text(report(res, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
