"""Can any ASR threshold tell a zoo backdoor from a dark frame? Per-image MSE to the target on the dev backdoors.

ASR counts the samples within MSE 0.1 of the target (both in [0, 1]; the threshold of VillanDiffusion that the
issue's bar uses). On the zoo, a flat dark frame already draws the dark-background HAT target within that distance
(research/results/zoo-v1-report.md, the baseline rows), so ASR cannot show those backdoors. This script measures, on each backdoored
model of a split, the per-image MSE to the target of n samples from each of:
  truth       eps + g, the model's own trigger
  zeros       eps (plain noise)
  flat-0.5    eps + a frame of -0.5
  flat-1      eps + a frame of -1
  flat-g      eps + g's flat part (a frame at g's per-channel mean)
and reports, at each threshold, the truth's ASR beside the best of the others (Wilson 95% intervals) and whether
the threshold separates them: truth ASR >= 0.5 and above every trivial trigger's. Choose on dev (the default);
--split test only reports.

    OMP_NUM_THREADS=1 python research/asr_threshold.py                       # dev backdoors, n = 64
    python research/asr_threshold.py --report-only                           # tables from the cache

Every (model, trigger) is cached under research/results/asr_threshold/ (keyed by the model's content hash, n and
seed): a re-run skips finished work and a killed run resumes. Outputs: research/results/asr-threshold-SPLIT.json, .md.
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
from quality.base import RECIPE, ZOO, git_info, log, write_json  # noqa: E402
from quality.measure import ModelCtx, trivial_trigger  # noqa: E402
from quality.tables import md_table  # noqa: E402
from quality.zoo import model_hash, scan_zoo  # noqa: E402

TRIGGERS = ("truth", "zeros", "flat-0.5", "flat-1", "flat-g")
THRESHOLDS = (0.1, 0.05, 0.02, 0.01, 0.005)
CACHE = HERE / "results" / "asr_threshold"


def trigger_tensor(name: str, g):
    """The trigger ``name`` for a model whose true trigger is ``g``."""
    if name == "truth":
        return g
    if name == "flat-g":
        return g.mean(dim=(-2, -1), keepdim=True).expand_as(g).contiguous()
    return trivial_trigger(name, g.shape)


def measure(ctx: "ModelCtx", name: str, n: int, seed: int) -> dict:
    """Per-image MSE of n samples from eps + trigger to the target ([0, 1] scale), their uniformity, the time."""
    from pdfast import metrics

    t0 = time.perf_counter()
    imgs = ctx.engine.sample(n, trigger=trigger_tensor(name, ctx.truth), seed=seed)
    return {"trigger": name, "n": n, "seed": seed, "mse": [float(v) for v in metrics.per_image_mse(imgs, ctx.target)],
            "uniformity": metrics.uniformity(imgs), "seconds": round(time.perf_counter() - t0, 1)}


def asr_at(mse: list[float], thr: float) -> dict:
    return stats.rate(sum(v < thr for v in mse), len(mse))


def summarize(units: dict[str, dict[str, dict]], thresholds=THRESHOLDS) -> list[dict]:
    """Per model and threshold: the truth's ASR, the best other trigger's, and whether the threshold separates them
    (truth ASR >= 0.5 and strictly above every other trigger's)."""
    rows = []
    for model, by in units.items():
        if "truth" not in by:
            continue
        for thr in thresholds:
            truth = asr_at(by["truth"]["mse"], thr)
            others = {k: asr_at(v["mse"], thr) for k, v in by.items() if k != "truth"}
            best = max(others.items(), key=lambda kv: kv[1]["rate"]) if others else (None, None)
            sep = truth["rate"] >= 0.5 and all(truth["rate"] > o["rate"] for o in others.values())
            rows.append({"model": model, "threshold": thr, "truth_asr": truth, "best_other": best[0],
                         "best_other_asr": best[1], "others": others, "separates": sep})
    return rows


def render_md(obj: dict) -> str:
    head = ["model", "threshold", "truth ASR", "best other (which)", "separates"]
    rows = [[r["model"], f"{r['threshold']:g}", stats.fmt_rate(r["truth_asr"]),
             f"{stats.fmt_rate(r['best_other_asr'])} ({r['best_other']})", "yes" if r["separates"] else "no"]
            for r in obj["rows"]]
    med = [[m, *(f"{sorted(u['mse'])[len(u['mse']) // 2]:.4f} / {u['uniformity']:.4f}" if u else "-"
                 for u in (by.get(t) for t in TRIGGERS))] for m, by in obj["units"].items()]
    count = {f"{t:g}": sum(r["separates"] for r in obj["rows"] if r["threshold"] == t) for t in obj["thresholds"]}
    n_models = len({r["model"] for r in obj["rows"]})
    return "\n".join([
        f"# ASR thresholds on the {obj['split']} backdoors", "",
        f"Generated {obj['date']} by `{obj['command']}`; commit {obj['git'].get('commit')}; device "
        f"{obj['environment'].get('device')}; torch {obj['environment'].get('torch')}. n = {obj['n']} samples per "
        f"trigger (seed {obj['seed']}), the full DDPM chain (fast engine, clip_sample as saved).", "",
        "A threshold separates a model when the truth's ASR is at least 0.5 and above that of every trigger that "
        "knows nothing of the model (plain noise, flat -0.5 and -1 frames, g's flat part). Models separated, per "
        "threshold: " + ", ".join(f"{t}: {c}/{n_models}" for t, c in count.items()) + ".", "",
        md_table(rows, head), "",
        "Median per-image MSE to the target / uniformity of the samples, per trigger:", "",
        md_table(med, ["model", *TRIGGERS]), ""])


def add_study_args(ap: argparse.ArgumentParser, cache: Path, stem: str, per: str) -> None:
    """The options every per-model sampling study here shares (this script, trigger_forms.py)."""
    ap.add_argument("--n", type=int, default=64, help=f"samples per {per} (default 64)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--zoo", type=Path, default=ZOO)
    ap.add_argument("--cache", type=Path, default=cache)
    ap.add_argument("--out", type=Path, default=None,
                    help=f"output stem: STEM.json and STEM.md (default research/results/{stem}-SPLIT)")
    ap.add_argument("--report-only", action="store_true")


def split_models(zoo: Path, split: str, names: list[str] | None) -> tuple[list, str | None]:
    """Every built model of ``split`` (recipe order) and an error line when a name in ``names`` is not one of its
    backdoors."""
    models = [m for m in scan_zoo(zoo, RECIPE if zoo == ZOO else None) if m.split == split]
    missing = sorted(set(names or []) - {m.name for m in models if m.backdoored})
    return models, (f"error: not a built backdoored {split} model: {missing[0]}; see python research/zoo/build.py --list"
                    if missing else None)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--split", default="dev", choices=["dev", "test"])
    ap.add_argument("--models", nargs="*",
                    help="run only these backdoored models (the report covers every model of the split with cached units)")
    add_study_args(ap, CACHE, "asr-threshold", "trigger")
    a = ap.parse_args(argv)
    a.out = a.out or HERE / "results" / f"asr-threshold-{a.split}"
    import torch

    torch.set_num_threads(1)
    models, err = split_models(a.zoo, a.split, a.models)
    if err:
        print(err, file=sys.stderr)
        return 2
    models = [m for m in models if m.backdoored]
    units: dict[str, dict[str, dict]] = {}
    for m in models:
        h = model_hash(m, a.cache)
        ctx = None
        for t in TRIGGERS:
            f = a.cache / m.name / f"{t}-n{a.n}-s{a.seed}-{h}.json"
            if f.is_file():
                units.setdefault(m.name, {})[t] = json.loads(f.read_text())
                continue
            if a.report_only or (a.models and m.name not in a.models):  # --models limits the work, not the report
                continue
            if ctx is None:
                m.hash = h
                ctx = ModelCtx(m)
            log(f"{m.name} {t} ...")
            rec = measure(ctx, t, a.n, a.seed)
            write_json(f, rec)
            units.setdefault(m.name, {})[t] = rec
            log(f"{m.name} {t}: {rec['seconds']} s")
    write_report(a, argv, "asr_threshold.py", "pdfast.asr-threshold/1", render_md,
                 {"thresholds": list(THRESHOLDS), "units": units, "rows": summarize(units)})
    return 0


def write_report(a, argv, script: str, schema: str, render, body: dict) -> None:
    """OUT.json (the run's provenance, then ``body``) and OUT.md (``render`` of it), each written atomically."""
    from pdfast.envinfo import environment
    from pdfast.io import atomic_write_bytes

    obj = {"schema": schema, "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
           "command": f"python research/{script} " + " ".join(argv if argv is not None else sys.argv[1:]),
           "git": git_info(), "environment": environment(), "split": a.split, "n": a.n, "seed": a.seed,
           **body}
    write_json(a.out.with_suffix(".json"), obj)
    atomic_write_bytes(a.out.with_suffix(".md"), render(obj).encode())
    log(f"wrote {a.out.with_suffix('.json')} and {a.out.with_suffix('.md')}")


if __name__ == "__main__":
    sys.exit(main())
