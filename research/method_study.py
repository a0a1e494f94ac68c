"""The method study (issue 8, item 3): PureDiffusion's optimisation choices measured on the DEV models of the zoo.

Which optimisation choices make PureDiffusion's trigger closest to the true one? Every variant is a set of
`pdfast.invert` options over a base (the paper preset, pdfast's defaults or Elijah). Each runs on every dev
backdoored model for every seed, and the trigger is scored against the model's true trigger without sampling
(pattern cosine, footprint L2, L2: pdfast.metrics.fidelity, as research/quality scores them) and, with --samples N,
by sampling too: ASR over N full DDPM chains from eps + trigger, and the verdict's statistic (pattern uniformity of
16 samples, seed 0) on every dev model, clean ones included. Test models are refused: choices are made on dev only.

Results are cached per (model, variant, seed, code version) under research/results/method-study/, so a stopped run
resumes; the table goes to research/results/method-study-dev.md (and .json).

  python research/method_study.py --variants elijah,paper,v0.1,pdfast --seeds 0,1
  python research/method_study.py --variants paper,paper+bounds --samples 64
  python research/method_study.py --list
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from quality.base import CACHE as QUALITY_CACHE, RECIPE, ZOO, log, write_json  # noqa: E402
from quality.codeversion import code_version  # noqa: E402
from quality.measure import ModelCtx, trigger_stats  # noqa: E402
from quality.planner import resolved_config  # noqa: E402
from quality.tables import f4, md_table  # noqa: E402
from quality.zoo import model_hash, scan_zoo  # noqa: E402

OUT = HERE / "results" / "method-study"
OLD_CODE = "49bf94199d"  # the first runs (before the code version was recorded in each run)
PAPER = {"preset": "paper"}
PDFAST = {"preset": "v0.1"}  # pdfast 0.1's defaults: what the study started from
# name -> options for pdfast.invert. Names say what is changed from which base.
VARIANTS: dict[str, dict] = {
    "elijah": {"method": "elijah"},
    "paper": PAPER,
    "v0.1": PDFAST,
    "pdfast": {"preset": "pdfast"},  # the default chosen by this study (= pdb+l2)
    "paper+antithetic": {**PAPER, "noise": "antithetic"},
    "paper+e60": {**PAPER, "epochs": 60},
    "paper+e100": {**PAPER, "epochs": 100},
    "paper+b80": {**PAPER, "batch": 80},
    "paper+cosine": {**PAPER, "lr_schedule": "cosine"},
    "paper+tail": {**PAPER, "average": "tail"},
    "paper+bounds": {**PAPER, "bounds": "image"},
    "paper+warm30": {**PAPER, "warm_epochs": 30},
    "paper+all": {**PAPER, "loss_steps": "all"},
    "paper+relative": {**PAPER, "objective": "relative"},
    "v0.1+bounds": {**PDFAST, "bounds": "image"},
    "v0.1-refine": {**PDFAST, "refine_epochs": 0},
    "v0.1-refine+bounds": {**PDFAST, "refine_epochs": 0, "bounds": "image"},
    "v0.1+tail": {**PDFAST, "average": "tail"},
}
# The search stage alone (antithetic noise, relative objective) in the image box: the first study's best.
PDB = {**PDFAST, "refine_epochs": 0, "bounds": "image"}
VARIANTS.update({
    "pdb+tail": {**PDB, "average": "tail"},
    "pdb+cosine": {**PDB, "lr_schedule": "cosine"},
    "pdb+e60": {**PDB, "epochs": 60},
    "pdb+all": {**PDB, "loss_steps": "all"},
    "pdb+l2": {**PDB, "norm": "l2"},
    "pdb+b80": {**PDB, "batch": 80},
    "pdb+warm30": {**PDB, "warm_epochs": 30},
    "pdb+fresh": {**PDB, "noise": "fresh"},
    "pdb+lr0.05": {**PDB, "lr": 0.05},
    "pdb+zeros": {**PDB, "init": "zeros"},
    "pdb+refine-trigger": {**PDB, "refine_epochs": 30, "refine_from": "trigger"},
    "paper+antithetic+tail": {**PAPER, "noise": "antithetic", "average": "tail"},
    "paper+antithetic+bounds+tail": {**PAPER, "noise": "antithetic", "bounds": "image", "average": "tail"},
    "pdb+l2+e60": {**PDB, "norm": "l2", "epochs": 60},
    "pdb+l2+e100": {**PDB, "norm": "l2", "epochs": 100},
    "pdb+l2+tail": {**PDB, "norm": "l2", "average": "tail"},
    "pdb+l2+e60+tail": {**PDB, "norm": "l2", "epochs": 60, "average": "tail"},
    "pdb+l2+all": {**PDB, "norm": "l2", "loss_steps": "all"},
    "pdb+l2+e60+b80": {**PDB, "norm": "l2", "epochs": 60, "batch": 80},
    "pdb+refine-trigger+tail": {**PDB, "refine_epochs": 30, "refine_from": "trigger", "average": "tail"},
})


def parse_variant(spec: str) -> tuple[str, dict]:
    """A name from VARIANTS, or NAME:opt=value,opt=value over the paper preset (values parsed as JSON if they can)."""
    if spec in VARIANTS:
        return spec, dict(VARIANTS[spec])
    if ":" not in spec:
        raise SystemExit(f"error: unknown variant '{spec}'; use one of {', '.join(VARIANTS)} or NAME:opt=value,...")
    name, rest = spec.split(":", 1)
    opts = dict(PAPER)
    for kv in rest.split(","):
        k, _, v = kv.partition("=")
        try:
            opts[k] = json.loads(v)
        except json.JSONDecodeError:
            opts[k] = v
    return name, opts


def invert_options(opts: dict, seed: int, k: int) -> dict:
    """The options passed to pdfast.invert: the variant's, the seed and (PureDiffusion only) K."""
    options = {**opts, "seed": seed}
    if options.get("method") != "elijah":
        options["steps"] = k
    return options


def ident(opts: dict, seed: int, k: int, samples: int) -> str:
    """What a cached run is looked up by: the fully resolved configuration (every option, presets applied) and the
    sample count, so a run is found again only while its options still mean the same inversion (changing a
    preset's defaults changes what a variant resolves to, and it runs again). The code version is recorded in the
    run, not in the key: options added since leave every earlier path bit-identical (tests/test_demo.py)."""
    return _key(resolved_config(invert_options(opts, seed, k)), samples)


def _key(resolved: dict, samples: int) -> str:
    """The preset's name is left out: once resolved, every option it set is in the configuration itself."""
    return json.dumps({"c": {k: v for k, v in resolved.items() if k != "preset"}, "n": samples}, sort_keys=True)


def cached_runs(folder: Path) -> dict[str, dict]:
    out = {}
    for f in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            r = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        if "resolved" in r:
            out[_key(r["resolved"], r.get("samples", 0))] = r
    return out


def run_one(ctx, opts: dict, seed: int, k: int, samples: int) -> dict:
    """Invert with ``opts`` and measure the trigger (and, with samples, ASR and the verdict's statistic)."""
    import pdfast
    from pdfast import metrics

    options = invert_options(opts, seed, k)
    t0 = time.perf_counter()
    res = pdfast.invert(ctx.model, evaluate=False, **options)
    rec = {"seconds": round(time.perf_counter() - t0, 2), "inversion_seconds": res.timings["inversion_seconds"],
           "network_calls": res.timings["network_calls"], "losses_last": res.losses[-3:]}
    if ctx.truth is not None:
        rec["trigger"] = trigger_stats(res.trigger, ctx.truth)
    if samples:
        pattern = metrics.trigger_pattern(res.trigger)
        pimgs = ctx.engine.sample(16, trigger=pattern, seed=0)
        rec["pattern_uniformity"] = metrics.uniformity(pimgs)
        if ctx.target is not None:
            imgs = ctx.engine.sample(samples, trigger=res.trigger, seed=0)
            mse = metrics.per_image_mse(imgs, ctx.target)
            rec["asr_k"], rec["asr_n"] = int((mse < 0.1).sum()), samples
    return rec


def summarise(rows: list[dict], variants: list[str]) -> dict:
    """Per variant: medians over (model, seed) of the trigger scores, wins against Elijah per model and seed."""
    out = {}
    eli = {(r["model"], r["seed"]): r for r in rows if r["variant"] == "elijah"}
    for v in variants:
        rs = [r for r in rows if r["variant"] == v and "trigger" in r]
        if not rs:
            continue
        s = {"runs": len(rs)}
        for m in ("pattern_cos", "footprint_l2", "l2", "max"):
            s[m] = statistics.median(r["trigger"][m] for r in rs)
        s["inversion_s"] = statistics.median(r["inversion_seconds"] for r in rs)
        pairs = [(r, eli[(r["model"], r["seed"])]) for r in rs if (r["model"], r["seed"]) in eli and v != "elijah"]
        if pairs:
            s["beats_elijah_cos"] = f"{sum(a['trigger']['pattern_cos'] > b['trigger']['pattern_cos'] for a, b in pairs)}/{len(pairs)}"
            s["beats_elijah_l2"] = f"{sum(a['trigger']['l2'] < b['trigger']['l2'] for a, b in pairs)}/{len(pairs)}"
            s["beats_elijah_fp"] = f"{sum(a['trigger']['footprint_l2'] < b['trigger']['footprint_l2'] for a, b in pairs)}/{len(pairs)}"
        asr = [r for r in rs if "asr_k" in r]
        if asr:
            k, n = sum(r["asr_k"] for r in asr), sum(r["asr_n"] for r in asr)
            s["asr"] = f"{k}/{n}"
            s["min_asr"] = min(r["asr_k"] / r["asr_n"] for r in asr)
        out[v] = s
    return out


def render(rows: list[dict], summary: dict, command: str, env: dict) -> str:
    lines = ["# Method study on the dev models (issue 8, item 3)", "",
             f"Generated by `{command}` on {env['device']}, torch {env['torch']}, code version {env['code']}. "
             "Scores against each model's true trigger g (research/quality): pattern cos (higher is better), "
             "footprint L2 and L2 (lower is better); medians over every (dev backdoored model, seed). "
             "'beats elijah' counts the (model, seed) pairs where the variant scores better than Elijah with the "
             "same seed. ASR: samples from eps + trigger with MSE < 0.1 to the target, pooled over models and seeds "
             "(min = the worst model).", ""]
    head = ["variant", "runs", "pattern cos", "footprint L2", "L2", "max", "beats elijah (cos / fp / L2)", "ASR",
            "worst ASR", "inversion s"]
    body = []
    for v, s in summary.items():
        body.append([v, s["runs"], f4(s["pattern_cos"]), f4(s["footprint_l2"]), f4(s["l2"]),
                     f4(s["max"]),
                     " / ".join(s.get(x, "-") for x in ("beats_elijah_cos", "beats_elijah_fp", "beats_elijah_l2")),
                     s.get("asr", "-"), f4(s["min_asr"]) if "min_asr" in s else "-",
                     f4(s["inversion_s"])])
    lines += [md_table(body, head), "", "## Every run", ""]
    head = ["model", "variant", "seed", "pattern cos", "footprint L2", "L2", "min", "max", "ASR", "pattern unif"]
    body = [[r["model"], r["variant"], r["seed"], *(f4(r["trigger"][m]) if "trigger" in r else "-"
                                                   for m in ("pattern_cos", "footprint_l2", "l2", "min", "max")),
             f"{r['asr_k']}/{r['asr_n']}" if "asr_k" in r else "-",
             f4(r["pattern_uniformity"]) if "pattern_uniformity" in r else "-"] for r in rows]
    lines += [md_table(body, head), ""]
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default="elijah,paper,pdfast", help="comma-separated names or NAME:opt=v,...")
    ap.add_argument("--seeds", default="0", help="comma-separated inversion seeds")
    ap.add_argument("--k", type=int, default=10, help="K for PureDiffusion variants")
    ap.add_argument("--samples", type=int, default=0, help="also sample: ASR over N chains and the verdict's statistic")
    ap.add_argument("--models", nargs="*", default=None, help="dev models to use (default: every dev model built)")
    ap.add_argument("--clean", action="store_true", help="include the dev clean models (needs --samples)")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--report", type=Path, default=HERE / "results" / "method-study-dev.md")
    ap.add_argument("--list", action="store_true", help="list the named variants")
    ap.add_argument("--report-only", action="store_true", help="only tabulate the cached runs (run nothing)")
    return ap


def main(argv=None) -> int:
    a = parser().parse_args(argv)
    if a.list:
        for n, o in VARIANTS.items():
            print(f"{n:24s} {o}")
        return 0
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    variants = [parse_variant(s) for s in a.variants.split(",") if s]
    seeds = [int(s) for s in a.seeds.split(",")]
    models = [m for m in scan_zoo(ZOO, RECIPE) if m.split == "dev" and (m.backdoored or a.clean)]
    if a.models:
        unknown = set(a.models) - {m.name for m in models}
        if unknown:
            print(f"error: {sorted(unknown)[0]} is not a built dev model; the study never looks at test models",
                  file=sys.stderr)
            return 2
        models = [m for m in models if m.name in a.models]
    code = code_version()["id"]
    for m in models:
        model_hash(m, QUALITY_CACHE)
    rows = [r for m in models for r in model_runs(m, variants, seeds, a, code)]
    codes = sorted({r.get("code_version", OLD_CODE) for r in rows})
    env = {"device": f"cpu ({os.cpu_count()} cores)", "torch": torch.__version__, "code": ", ".join(codes) or code}
    summary = summarise([r for r in rows if r["backdoored"]], [n for n, _ in variants])
    command = "python research/method_study.py " + " ".join(argv if argv is not None else sys.argv[1:])
    a.report.write_text(render(rows, summary, command, env))
    write_json(a.report.with_suffix(".json"), {"command": command, "env": env, "summary": summary, "rows": rows})
    print(render([], summary, command, env))
    return 0


def model_runs(m, variants: list[tuple[str, dict]], seeds: list[int], a, code: str) -> list[dict]:
    """One model's runs of every variant and seed: cached ones read back, the others run and cached (none with
    --report-only); a clean model only with --samples (it has no true trigger to score against)."""
    ctx, cached, rows = None, cached_runs(a.out / m.name), []
    for name, opts in variants:
        for seed in seeds:
            if not m.backdoored and not a.samples:
                continue
            rec = cached.get(ident(opts, seed, a.k, a.samples))
            if rec is None and a.report_only:
                continue
            if rec is None:
                ctx = ctx or ModelCtx(m)
                log(f"{m.name} {name} seed {seed}")
                rec = {"model": m.name, "backdoored": m.backdoored, "variant": name, "options": opts,
                       "seed": seed, "k": a.k, "samples": a.samples, "code_version": code,
                       "resolved": resolved_config(invert_options(opts, seed, a.k)),
                       **run_one(ctx, opts, seed, a.k, a.samples)}
                h = hashlib.sha256(ident(opts, seed, a.k, a.samples).encode()).hexdigest()[:12]
                (a.out / m.name).mkdir(parents=True, exist_ok=True)
                write_json(a.out / m.name / f"{name.replace(':', '_')}-s{seed}-{h}.json", rec)
            rec["variant"] = name
            rows.append(rec)
    return rows


if __name__ == "__main__":
    raise SystemExit(main())
