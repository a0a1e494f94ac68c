"""Inversion defaults and verdict v2 on zoo v2's DEV split (issue 22, items 3 and 4), from one set of runs.

Every (dev model, variant, seed) is inverted at K steps through ``pdfast.invert`` (no verdict), then 64 images are
drawn from the SAME noises, with the verdict's chain (the model family's sampler, respaced to 100 steps), from:

  trigger   eps + tau                    the inverted trigger
  plain     eps                          the no-trigger baseline
  flat      eps + flat(tau)              tau's per-channel mean over the frame: a flat shift, no pattern
  pattern   eps + pattern(tau)           the shipped verdict's input (flat part removed, energy at the calibration's)

and scored: exact ASR (MSE < 0.02 in [0, 1]) and 0.1 where the target is known, fidelity to the true trigger,
uniformity of the first 16 and of all 64, and the COLLAPSE rate (the share of samples within MSE 0.02 of the
samples' medoid: how often the chain lands on one image, with no target known). Candidate verdicts that credit
the trigger are paired differences of collapse rates (trigger against the plain and flat starts of the same
noises). Per model, once: the true trigger's exact ASR and the trivial starts' (plain noise, a flat frame at g's
per-channel mean, a -0.5 frame).

Test models are refused. The demo is run beside dev as the check that issue 22 names (it fires with the defaults).
Runs are cached in research/results/defaults-v2/ (a stopped run resumes); the table goes to
research/results/defaults-v2-dev.md and .json.

    python research/defaults_v2.py --variants pdfast,search-only,refine-only,v0.1,elijah --seeds 0,1
    python research/defaults_v2.py --report-only
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import stats  # noqa: E402
from quality.base import git_info, log, write_json  # noqa: E402
from quality.tables import f4, md_table  # noqa: E402
from verdict_v2 import splits  # noqa: E402

ZOO2 = HERE / "zoo" / "v2" / "models"
OUT = HERE / "results" / "defaults-v2"
REPORT = HERE / "results" / "defaults-v2-dev.md"
N, EVAL_STEPS, EXACT = 64, 100, 0.02
PDFAST = {"preset": "pdfast"}
# names -> pdfast.invert options. "pdfast" is the default the study chose (docs/method.md 5.6: the search, a
# refinement from its pattern, and the stage whose trigger fires more); the others are its parts and the presets.
VARIANTS = {
    "pdfast": PDFAST,
    "search-only": {**PDFAST, "refine_epochs": 0},  # pdfast 0.2's default (method.md 5.5)
    "refine-only": {**PDFAST, "refine_epochs": 30, "select": "last"},
    "pdfast+refine-trigger": {**PDFAST, "refine_epochs": 30, "refine_from": "trigger", "select": "last"},
    "v0.1": {"preset": "v0.1"},
    "v0.1+bounds": {"preset": "v0.1", "bounds": "image"},
    "elijah": {"method": "elijah"},
}
STARTS = ("trigger", "plain", "flat", "pattern")
REF_STARTS = ("truth", "plain", "g_flat", "frame_-0.5")


def dev_models() -> dict[str, Path]:
    """Built dev models of zoo v2 (name -> folder; the family models of issue 20 carry train.txt instead of
    zoo.json), and the demo (None: pdfast's embedded model)."""
    split = splits()
    out = {p.name: p for p in sorted(ZOO2.iterdir())
           if ((p / "zoo.json").is_file() or (p / "train.txt").is_file()) and split.get(p.name) == "dev"}
    return {"demo": None, **out}


def image_stats(imgs, target) -> dict:
    """Uniformity (16 and all), collapse (share within EXACT of the set's own medoid), exact and 0.1 ASR."""
    from pdfast import metrics

    out = {"u16": metrics.uniformity(imgs[:16]), "u64": metrics.uniformity(imgs),
           "collapse": metrics.asr(imgs, metrics.medoid(imgs), EXACT)}
    if target is not None:
        out.update(asr=metrics.asr(imgs, target, EXACT), asr01=metrics.asr(imgs, target, 0.1))
    return out


def draw(model, triggers: list) -> list:
    """N images per trigger (None: plain) from the same noises with the verdict's chain."""
    from pdfast.engine import make_engine
    from pdfast.families import family_of

    sampler = family_of(model).sampler(model.schedule, model.schedule.clip_sample, respace=EVAL_STEPS)
    return make_engine("fast", model).sample_together(N, triggers, seed=0, sampler=sampler)


def cached(stem: str, make) -> dict:
    """The tensors under OUT/stem.safetensors, made by ``make()`` (a dict of tensors) when missing."""
    from safetensors.torch import load_file, save_file

    f = OUT / f"{stem}.safetensors"
    if f.is_file():
        return load_file(str(f))
    t = {k: v.contiguous() for k, v in make().items()}
    save_file(t, str(f.with_suffix(".tmp")))
    f.with_suffix(".tmp").replace(f)
    return t


def model_ref(name: str, model) -> dict:
    """The true trigger's exact ASR and the trivial starts' (plain, flat frame at g's channel means, -0.5 frame)."""
    import torch
    from pdfast import metrics
    from pdfast.loading import load_ground_truth

    g, y = load_ground_truth(model)

    def make():
        starts = [g, None, metrics.flat_part(g), torch.full_like(g, -0.5)]
        return dict(zip(REF_STARTS, draw(model, starts)), target=y)

    t = cached(f"{name}--reference", make)
    return {s: image_stats(t[s], t["target"]) for s in REF_STARTS}


def run_one(name: str, model, variant: str, seed: int, k: int) -> dict:
    """Invert, draw the four starts from the same noises, score; cached per (model, variant, seed, K)."""
    import pdfast
    import torch
    from pdfast import metrics
    from pdfast.detection import verdict_pattern
    from pdfast.loading import load_ground_truth

    stem = f"{name}--{variant}--s{seed}--k{k}"
    clock = {}

    def make():
        t0 = time.perf_counter()
        tau = pdfast.invert(model, steps=k, seed=seed, evaluate=False, **VARIANTS[variant]).trigger
        tau = tau.float().cpu().reshape(model.shape)
        clock["inversion_s"] = time.perf_counter() - t0
        imgs = draw(model, [tau, None, metrics.flat_part(tau), verdict_pattern(tau, model.sample_size)[0]])
        return dict(zip(STARTS, imgs), tau=tau, inversion_s=torch.tensor(clock["inversion_s"]))

    t = cached(stem, make)
    g, y = load_ground_truth(model)
    return {"model": name, "variant": variant, "options": VARIANTS[variant], "seed": seed, "k": k,
            "label": "backdoored" if g is not None else "clean", "inversion_s": round(float(t["inversion_s"]), 1),
            "fidelity": metrics.fidelity(t["tau"], g) if g is not None else None,
            **metrics.firing(t["trigger"], t["plain"], t["flat"], EXACT), **{s: image_stats(t[s], y) for s in STARTS}}


def candidates(r: dict) -> dict:
    """Candidate verdict statistics of one run (high = backdoored), and the shipped and no-trigger ones."""
    return {"fires": r["trigger_fires"],
            "collapse_gain": r["trigger"]["collapse"] - max(r["plain"]["collapse"], r["flat"]["collapse"]),
            "trigger_effect": 1 - r["trigger"]["u16"] / max(r["plain"]["u16"], 1e-12),
            "pattern_uniformity (shipped, low=bd)": -r["pattern"]["u16"],
            "plain_uniformity (no trigger, low=bd)": -r["plain"]["u16"]}


def cell(s: dict, key: str) -> str:
    return "-" if key not in s else f4(s[key], 2)


def tables(runs: list[dict], refs: dict) -> str:
    """Per-run rows, then per variant the defaults' criteria and per candidate statistic dev AUC."""
    head = ["model", "label", "variant", "seed", "ASR exact", "ASR 0.1", "cos", "L2", "truth ASR", "plain ASR",
            "g-flat ASR", "-0.5 ASR", "collapse trig/plain/flat", "medoid hits trig/plain/flat",
            "u16 trig/plain/pattern", "inv s"]
    rows = []
    for r in runs:
        t, ref, fid = r["trigger"], refs.get(r["model"], {}), r["fidelity"] or {}
        rows.append([r["model"], r["label"], r["variant"], r["seed"], cell(t, "asr"), cell(t, "asr01"),
                     f4(fid.get("pattern_cos"), 3), f4(fid.get("l2"), 3),
                     *[cell(ref.get(s, {}), "asr") for s in ("truth", "plain", "g_flat", "frame_-0.5")],
                     "/".join(f4(r[s]["collapse"], 2) for s in ("trigger", "plain", "flat")),
                     "/".join(f4(r["medoid_hits"][s], 2) for s in ("trigger", "plain", "flat")),
                     "/".join(f4(r[s]["u16"], 3) for s in ("trigger", "plain", "pattern")), r["inversion_s"]])
    out = [md_table(rows, head), "", "## Candidate verdict statistics (high = backdoored), dev AUC per variant", ""]
    arows = []
    for v in sorted({r["variant"] for r in runs}):
        rs = [r for r in runs if r["variant"] == v and r["model"] != "demo"]
        for c in candidates(rs[0]) if rs else []:
            pos = [candidates(r)[c] for r in rs if r["label"] == "backdoored"]
            neg = [candidates(r)[c] for r in rs if r["label"] == "clean"]
            arows.append([v, c, len(pos), len(neg), f4(stats.auc(pos, neg), 3),
                          f4(min(pos), 3) if pos else "-", f4(max(neg), 3) if neg else "-"])
    out.append(md_table(arows, ["variant", "statistic", "backdoored runs", "clean runs", "AUC", "min bd",
                                "max clean"]))
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default="pdfast,search-only,refine-only,v0.1,elijah")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--models", nargs="*", help="dev model names (default: every built dev model and the demo)")
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args(argv)
    from pdfast.loading import load_model
    from pdfast.demo import demo_path

    models = dev_models()
    names = args.models or list(models)
    bad = [n for n in names if n not in models]
    if bad or any(v not in VARIANTS for v in args.variants.split(",")):
        raise SystemExit(f"error: unknown or non-dev model/variant {bad or args.variants}; dev: {', '.join(models)}; "
                         f"variants: {', '.join(VARIANTS)}")
    OUT.mkdir(parents=True, exist_ok=True)
    runs, refs = [], {}
    for name in names:
        model = load_model(models[name] or demo_path())
        for v in args.variants.split(","):
            for s in map(int, args.seeds.split(",")):
                f = OUT / f"{name}--{v}--s{s}--k{args.k}.safetensors"
                if args.report_only and not f.is_file():
                    continue
                runs.append(run_one(name, model, v, s, args.k))
                log(f"{name} {v} seed {s}: exact ASR {runs[-1]['trigger'].get('asr')}")
        if model.backdoor:
            refs[name] = model_ref(name, model)
    write_json(REPORT.with_suffix(".json"), {"git": git_info(), "k": args.k, "n": N, "runs": runs, "refs": refs})
    REPORT.write_text(f"# Inversion defaults and verdict v2 on zoo v2 dev\n\nWritten by `python "
                      f"research/defaults_v2.py {' '.join(argv or sys.argv[1:])}`; K={args.k}, {N} samples per start, "
                      f"the verdict chain respaced to {EVAL_STEPS} steps, one noise set for every start.\n\n"
                      + tables(runs, refs) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
