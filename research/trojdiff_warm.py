"""Where does the TrojDiff warm stage end, per learning-rate rule and inversion seed? (issue 20)

research/trojdiff_seeds.py found that on a 2-core AMD EPYC the pdfast preset's TrojDiff warm stage (300 Adam steps
at t = T, lr 0.1 constant, one fixed noise batch) ends at pattern cosine 0.82-0.84 to the true x_T shift on seeds
0-2, and that no stage's trigger fires. With a constant lr of 0.1, Adam's steps stay near 0.1 per pixel to the end,
so the last iterate may circle the minimum instead of settling in it. This script runs the warm stage alone
(`pdfast.invert` with no refinement, the trigger taken at the warm stage's last step) on zoo v2's dev TrojDiff
model under variants of the learning-rate rule and the noise batch, and scores each result by pattern cosine and
L2 to the truth and by firing (pdfast.inversion.select_firing's 16 chains of TrojDiff's sampler; 1 = every sample
on one image neither plain noise nor the flat part reaches).

    OMP_NUM_THREADS=1 python research/trojdiff_warm.py --seeds 0             # records per CPU, variant and seed
    python research/trojdiff_warm.py --report-only                           # the table from the records

Records: research/results/trojdiff-warm.json; report: research/results/trojdiff-warm.md. Chosen on the dev model
only; the test TrojDiff model is not read here.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent / "benchmarks"))

from common import device_slug  # noqa: E402
from quality.base import git_info, log, write_json  # noqa: E402
from quality.tables import md_table  # noqa: E402
from trojdiff_seeds import MODEL  # noqa: E402

RECORDS = HERE / "results" / "trojdiff-warm.json"
VARIANTS = {  # name -> the warm stage's options over the TrojDiff preset (warm_epochs 300, lr 0.1 constant)
    "constant": {},
    "cosine": {"lr_schedule": "cosine"},
    "fixed-antithetic": {"noise": "fixed-antithetic"},  # the batch's noise mean exactly 0 (eps and -eps pairs)
    # two warm stages: the preset's, then from its result on pairs, where the truth zeroes the objective
    "then-antithetic": [{}, {"noise": "fixed-antithetic"}],
}


def measure(variant: str, seed: int) -> dict:
    """The warm stage alone under one variant; its trigger against the truth and by firing."""
    import torch

    from pdfast import metrics
    from pdfast.config import InversionConfig
    from pdfast.engine import make_engine
    from pdfast.families import family_of
    from pdfast.inversion import select_firing
    from pdfast.loading import load_ground_truth, load_model

    torch.set_num_threads(1)
    model = load_model(MODEL).frozen()
    truth = load_ground_truth(model)[0]
    stages = VARIANTS[variant] if isinstance(VARIANTS[variant], list) else [VARIANTS[variant]]
    t0, trig, losses = time.perf_counter(), None, []
    for opts in stages:
        trig, last = warm_stage(model, seed, opts, trig)
        losses += last
    seconds = round(time.perf_counter() - t0, 1)
    cfg = InversionConfig(seed=seed).resolved(family_of(model).name)  # select_firing's noises: seed + 1
    _, sel = select_firing(model, cfg, make_engine("fast", model), {"warm": trig, "truth": truth})
    return {"variant": variant, "seed": seed, "cpu": device_slug("cpu"), "git": git_info(), "seconds": seconds,
            "torch": torch.__version__, "pattern_cosine": metrics.pattern_cosine(trig, truth),
            "l2": metrics.l2_distance(trig, truth), "fires": sel["fires"]["warm"],
            "truth_fires": sel["fires"]["truth"], "warm_losses_last": losses,
            "trigger": [round(v, 5) for v in trig.flatten().tolist()]}


def warm_stage(model, seed: int, opts: dict, start):
    """One warm stage (the preset's options with ``opts`` over them) from ``start`` (None: the preset's init); its
    last trigger and its last 5 losses."""
    import pdfast

    warm_end = opts.get("warm_epochs", 300) - 1
    kept = {}

    def keep(it, loss, delta):
        if it == warm_end:
            kept["warm"] = delta.detach().clone().reshape(model.shape)

    # epochs must be positive: one search step follows, not scored (the callback's copy at the warm end is)
    res = pdfast.invert(model, seed=seed, evaluate=False, epochs=1, refine_epochs=0, callback=keep, start=start,
                        **{"polish_epochs": 0, **opts})  # the preset's polish (pdfast 0.5) is what is studied here
    return kept["warm"], res.inversion.losses[warm_end - 4:warm_end + 1]


def read_records() -> dict:
    return json.loads(RECORDS.read_text()) if RECORDS.exists() else {}


def report() -> None:
    """research/results/trojdiff-warm.md: one row per CPU, variant and seed."""
    rows = [[r["cpu"], r["variant"], r["seed"], f"{r['pattern_cosine']:.3f}", f"{r['l2']:.2f}", f"{r['fires']:.2f}",
             f"{r['truth_fires']:.2f}", r["seconds"]] for _, r in sorted(read_records().items())]
    (HERE / "results" / "trojdiff-warm.md").write_text(
        "# The TrojDiff warm stage per learning-rate rule (issue 20)\n\n"
        f"Written by `python research/trojdiff_warm.py` on {MODEL.name} (zoo v2 dev): the pdfast preset's TrojDiff "
        "warm stage alone (t = T, one fixed batch of 40, Adam lr 0.1), one CPU thread, seconds with other jobs "
        "beside. Firing: 16 chains of TrojDiff's sampler from the same noises for the trigger, plain noise and its "
        "flat part (1 = every sample on one image the others do not reach); the truth's firing on the same noises "
        "beside it.\n\n"
        + md_table(rows, ["cpu", "variant", "seed", "pattern cosine", "L2", "fires", "truth fires", "seconds"]) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", nargs="*", type=int, default=[0])
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args(argv)
    if not args.report_only:
        for seed in args.seeds:
            for variant in args.variants:
                key = f"{device_slug('cpu')}-{variant}-s{seed}"
                if key in read_records():
                    continue
                record = measure(variant, seed)
                log(f"{key}: cosine {record['pattern_cosine']:.3f} l2 {record['l2']:.2f} fires {record['fires']:.2f}")
                write_json(RECORDS, {**read_records(), key: record})
    report()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
