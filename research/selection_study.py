"""Which candidate should the firing selection return when several fire alike? (issue 22, item 4; dev split only)

pdfast's default inversion ends with up to seven candidate triggers (the search, its refinement, five patch
searches; docs/method.md 5.6 and 5.9) and returns the one that fires most on 16 chains; a tie keeps the first in
that order. This study keeps every candidate of `pdfast.invert` with the defaults (K = 10) on zoo v2's DEV
backdoors that run the patch grid, and on the demo, and scores each:

  fires       the selection's own score (16 chains of the verdict's sampler, seed + 1)
  rel, abs    the inversion's objective on one fixed batch of 20 antithetic pairs over all K steps (seed 10,000 +
              seed): relative (the search's, eq. 17 over ||lambda_t delta||) and absolute (the refinement's, eq. 17)
  exact ASR   MSE < 0.02 to the backdoor's target over 64 chains of the 100-step sampler (seed 0), for every
              candidate within 1/16 of the top score, the search's, Elijah's, the truth's and plain noise's
  cosine      pattern cosine to the true trigger

and Elijah's trigger (`method="elijah"`, same seed) is scored the same way, as a possible eighth candidate. Selection
rules are then compared by the exact ASR of what they return: the shipped rule (first of the top), the top with ties
broken by the lowest objective, and either with Elijah's trigger added. Clean dev models (``--clean``) get the
selection scores only: a rule that changes the top score changes what the verdict sees there.

Test models are refused. Records go to research/results/selection-study.json (one per model and seed; a stopped
run resumes; ``--records`` names another file for a run beside it, ``--also`` adds files to the report), the tables
to research/results/selection-study.md.

    OMP_NUM_THREADS=1 python research/selection_study.py --seeds 0
    OMP_NUM_THREADS=1 python research/selection_study.py --clean --seeds 0
    python research/selection_study.py --report-only
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from defaults_v2 import EVAL_STEPS, EXACT, N, dev_models, draw  # noqa: E402
from quality.base import git_info, log, write_json  # noqa: E402
from quality.tables import f4, md_table  # noqa: E402

RECORDS = HERE / "results" / "selection-study.json"
REPORT = HERE / "results" / "selection-study.md"
K, OBJ_BATCH = 10, 40  # N, EVAL_STEPS, EXACT: defaults_v2's, whose draw() makes the images
NEAR = 1 / 16  # one chain of the selection's 16
RULES = ("first", "objective", "first+elijah")


def objective_values(model, cfg, engine, lambdas, cands: dict, seed: int) -> dict:
    """Each candidate's relative and absolute objective over all K steps on one fixed antithetic batch."""
    import torch
    from pdfast.families import family_of
    from pdfast.objectives import ShiftObjective

    sampler = family_of(model, cfg.attack_family).inversion_sampler(
        model.schedule, cfg.clip_for(model.schedule.clip_sample), cfg.steps)
    gen = torch.Generator().manual_seed(10_000 + seed)
    half = torch.randn((OBJ_BATCH // 2, *model.shape), generator=gen)
    noise = torch.cat([half, -half]).to(model.device)  # antithetic pairs, as the inversion's noise modes draw them
    zs = [torch.randn((OBJ_BATCH, *model.shape), generator=gen).to(model.device) for _ in range(cfg.steps - 1)]
    zs = [z if sampler.needs_noise(i) else None for i, z in enumerate(zs)]
    out = {}
    for name, t in cands.items():
        d = t.reshape(1, *model.shape).to(model.device)
        out[name] = {kind: engine.loss_and_grad(d, noise, zs, sampler, ShiftObjective(lambdas, cfg.norm, rel),
                                                list(range(cfg.steps)))[0]
                     for kind, rel in (("rel", True), ("abs", False))}
    return out


def study(name: str, model, seed: int) -> dict:
    """Invert with the defaults keeping every candidate, add Elijah's trigger, score them all."""
    import pdfast
    import torch
    from pdfast import inversion, metrics
    from pdfast.families import family_of
    from pdfast.loading import load_ground_truth

    kept = {}
    shipped = inversion.select_firing

    def keep(model_, cfg, engine, cands):
        out = shipped(model_, cfg, engine, cands)
        kept.update(cfg=cfg, engine=engine, cands={k: v.detach().cpu().reshape(model_.shape) for k, v in cands.items()},
                    selection=out[1])
        return out

    t0 = time.perf_counter()
    inversion.select_firing = keep  # run_inversion looks the name up in its module at call time
    try:
        res = pdfast.invert(model, steps=K, seed=seed, evaluate=False)
    finally:
        inversion.select_firing = shipped
    inv_s = time.perf_counter() - t0
    cfg, engine, cands = kept["cfg"], kept["engine"], dict(kept["cands"])
    t0 = time.perf_counter()
    cands["elijah"] = pdfast.invert(model, method="elijah", seed=seed, evaluate=False).trigger.float().cpu() \
        .reshape(model.shape)
    eli_s = time.perf_counter() - t0
    fires = dict(kept["selection"]["fires"])
    fires["elijah"] = shipped(model, cfg, engine, {"elijah": cands["elijah"]})[1]["fires"]["elijah"]
    objective = objective_values(model, cfg, engine, [float(v) for v in res.inversion.scales.values], cands, seed)
    g, y = load_ground_truth(model) if model.backdoor else (None, None)
    rec = {"model": name, "seed": seed, "label": "backdoored" if g is not None else "clean",
           "family": family_of(model).name, "shipped_choice": kept["selection"]["chosen"], "fires": fires,
           "tie": kept["selection"].get("tie"),
           "objective": objective, "seconds": {"inversion": round(inv_s, 1), "elijah": round(eli_s, 1)},
           "exact": {}, "asr01": {}, "cosine": {}}
    if g is None:
        return rec
    top = max(fires.values())
    judged = [k for k, v in fires.items() if v >= top - NEAR - 1e-9 or k in ("search", "elijah")]
    t0 = time.perf_counter()
    imgs = draw(model, [cands[k] for k in judged] + [g, None])
    rec["seconds"]["asr"] = round(time.perf_counter() - t0, 1)
    for k, im in zip(judged + ["truth", "plain"], imgs):
        rec["exact"][k] = round(metrics.asr(im, y, EXACT) * N)
        rec["asr01"][k] = metrics.asr(im, y, 0.1)
    rec["cosine"] = {k: metrics.pattern_cosine(cands[k], g) for k in cands}
    return rec


def choose(rec: dict, rule: str) -> str:
    """The candidate a rule returns: "first", the first of the top score (the rule before the tie re-score);
    "objective", the lowest relative objective within NEAR of the top; "first+elijah", the first of the top with
    Elijah's trigger among the candidates."""
    names = [k for k in rec["fires"] if rule.endswith("+elijah") or k != "elijah"]
    top = max(rec["fires"][k] for k in names)
    if rule == "objective":
        return min((k for k in names if rec["fires"][k] >= top - NEAR - 1e-9), key=lambda k: rec["objective"][k]["rel"])
    return next(k for k in names if rec["fires"][k] >= top - 1e-9)


def tables(recs: list[dict]) -> str:
    """Per model: the ties, what each rule returns and its exact ASR, the best candidate; then every candidate."""
    def hit(r, k):
        return f"{k} ({r['fires'][k]:.3f}" + (f", {r['exact'][k]}/{N})" if k in r["exact"] else ")")

    rows, out = [], []
    for r in recs:
        names = [k for k in r["fires"] if k != "elijah"]
        top = max(r["fires"][k] for k in names)
        tied = [k for k in names if r["fires"][k] >= top - 1e-9]
        near = [k for k in names if r["fires"][k] >= top - NEAR - 1e-9]
        judged = [k for k in names if k in r["exact"]]
        best = max(judged, key=lambda k: r["exact"][k]) if judged else "-"
        tie = "none" if len(tied) < 2 else ", ".join(tied) + (
            "" if not r.get("tie") else " (on 64 chains: " + ", ".join(
                f"{k} {v:.3f}" for k, v in r["tie"]["fires"].items()) + f"; kept {r['shipped_choice']})")
        rows.append([r["model"], r["label"], r["seed"], tie,
                     ", ".join(near), *[hit(r, choose(r, rule)) for rule in RULES],
                     hit(r, best) if judged else "-",
                     " / ".join(f"{r['exact'][k]}" for k in ("truth", "plain")) if r["exact"] else "-"])
        cands = [[k, f4(r["fires"][k], 3), f4(r["objective"][k]["rel"]), f4(r["objective"][k]["abs"]),
                  "-" if k not in r["exact"] else f"{r['exact'][k]}/{N}", f4(r["cosine"].get(k), 2)]
                 for k in r["fires"]]
        out.append(f"### {r['model']} ({r['label']}, {r['family']}), seed {r['seed']}\n\n" + md_table(
            cands, ["candidate", "fires (of 16 chains)", "objective rel", "objective abs", "exact ASR",
                    "pattern cosine"]))
    head = ["model", "label", "seed", "tied at the top", "within 1/16 of the top", "first of the top (pdfast 0.5)",
            "lowest objective within 1/16", "first of the top, Elijah's trigger a candidate",
            "best judged candidate by exact ASR", "truth / plain noise exact hits"]
    return ("## What each rule returns: candidate (its score on the selection's 16 chains, its exact hits of 64)\n\n"
            + md_table(rows, head) + "\n\n## Every candidate\n\n" + "\n\n".join(out))


def rejected(folder: Path | None) -> bool:
    """True for a model zoo v2's gate rejected (its zoo.json says why); the demo (None) is not."""
    f = None if folder is None else folder / "zoo.json"
    return f is not None and f.is_file() and "rejected" in json.loads(f.read_text())


def read(files: list[Path]) -> dict:
    """'<model>/s<seed>' -> record, from every records file given (a later file wins)."""
    out = {}
    for f in files:
        if f.is_file():
            out.update(json.loads(f.read_text())["records"])
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--models", nargs="*", help="dev model names (default: the dev backdoors with the patch grid and "
                    "the demo; with --clean the dev clean models)")
    ap.add_argument("--clean", action="store_true", help="the clean dev models (selection scores only)")
    ap.add_argument("--records", type=Path, default=RECORDS, help="the records file this run writes (two runs side by "
                    "side each write their own)")
    ap.add_argument("--also", type=Path, nargs="*", default=[], help="more records files, read for the report")
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args(argv)
    from pdfast.demo import demo_path
    from pdfast.families import family_of
    from pdfast.loading import load_model

    models = dev_models()
    names = args.models or list(models)
    bad = [n for n in names if n not in models]
    if bad:
        raise SystemExit(f"error: not a built dev model: {', '.join(bad)}; dev: {', '.join(models)}")
    recs = read([args.records])
    if not args.report_only:
        for name in names:
            model = load_model(models[name] or demo_path())
            if args.models is None and (bool(model.backdoor) == args.clean or family_of(model).name == "trojdiff"
                                        or rejected(models[name])):
                continue  # the default sets: TrojDiff runs no patches (FAMILY_PRESETS); the gate's rejects are out
            for s in map(int, args.seeds.split(",")):
                key = f"{name}/s{s}"
                if key in recs:
                    continue
                recs[key] = study(name, model, s)
                log(f"{key}: shipped {recs[key]['shipped_choice']}, exact {recs[key]['exact']}")
                write_json(args.records, {"git": git_info(), "k": K, "n": N, "records": recs})
    recs = read([args.records, *args.also])
    ordered = sorted(recs.values(), key=lambda r: (r["label"], r["model"], r["seed"]))
    REPORT.write_text("# The firing selection's ties on zoo v2's dev split (issue 22)\n\nWritten by `OMP_NUM_THREADS=1 "
                      "python research/selection_study.py` (research/selection_study.py; records in "
                      f"research/results/selection-study.json). pdfast's defaults, K = {K}; exact ASR over {N} chains "
                      f"of the family's sampler respaced to {EVAL_STEPS} steps (seed 0), MSE < {EXACT} to the target; "
                      "objectives on one fixed batch of 20 antithetic pairs over all K steps. CPU, one thread.\n\n"
                      + tables(ordered) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
