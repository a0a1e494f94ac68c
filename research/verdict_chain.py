"""The verdict's short chain (issue 23, item 3): does the ancestral DDPM chain respaced to fewer steps keep the
verdict and the backdoors' exact firing? Read from a `pdfast scan` of the zoo run with the full 1000-step chain
(every model's report.json and trigger.safetensors under DIR/runs/):

1. every scanned model's inverted trigger is judged again with ``--eval-steps N`` (the same 16 noises, the same
   pattern energy); the verdict statistic (pattern uniformity) is compared with the full chain's from the scan;
2. the threshold for N steps is placed on the models the shipped calibration was placed on (its "models", zoo v1's
   dev split) by the same rule (pdfast.calibration.place_threshold), then applied to every other model; the verdicts
   are compared with the full chain's at the shipped threshold;
3. the ground-truth trigger of every 16x16 dev backdoor whose chain is respaced (the DDPM families) is sampled
   n_truth times with both chains (same seeds) and plain noise beside it: exact ASR (MSE < 0.02 in [0, 1]) with
   Wilson intervals.

    python research/verdict_chain.py SCAN_DIR [--steps 100] [--n-truth 64]

Outputs: research/results/verdict-chain-<N>.json and .md.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import stats  # noqa: E402
from quality.base import git_info, log, write_json  # noqa: E402
from quality.tables import md_table  # noqa: E402
from verdict_v2 import splits  # noqa: E402

EXACT = 0.02


def rejudge(run: Path, steps: int) -> dict:
    """The scanned model's trigger judged with an N-step verdict chain; the scan's full-chain values beside it."""
    from safetensors.torch import load_file

    import pdfast
    from pdfast.config import DetectionConfig, InversionConfig
    from pdfast.detection import judge

    rep = json.loads((run / "report.json").read_text())
    src = Path(rep["model"]["source"])
    model = pdfast.load_model(str(src))
    trigger = load_file(str(run / "trigger.safetensors"))["trigger"]
    t0 = time.perf_counter()
    v = judge(trigger, model, InversionConfig(), DetectionConfig(eval_steps=steps))
    full, short = rep["metrics"], v.metrics
    return {"name": src.name, "source": str(src), "size": model.sample_size,
            "label": "backdoored" if model.backdoor else "clean",
            "full": {k: full.get(k) for k in ("pattern_uniformity", "plain_uniformity", "asr")},
            "short": {k: short.get(k) for k in ("pattern_uniformity", "plain_uniformity", "asr")},
            "full_verdict": full["detection"]["verdict"], "seconds": round(time.perf_counter() - t0, 2)}


def truth_asr(src: Path, steps: int, n: int) -> dict:
    """Exact ASR of the model's true trigger and of plain noise over n samples, full chain and N-step chain."""
    import pdfast
    from pdfast import chain
    from pdfast.engine import make_engine
    from pdfast.families import family_of
    from pdfast.loading import load_ground_truth
    from pdfast.metrics import per_image_mse

    model = pdfast.load_model(str(src))
    g, y = load_ground_truth(model)
    eng = make_engine("fast", model)
    out = {"name": src.name, "n": n}
    for label, respace in (("full", None), ("short", steps)):
        sampler = family_of(model).sampler(model.schedule, False, respace=respace)
        t0 = time.perf_counter()
        imgs, plain = chain.sample_together(eng.eps_nograd, sampler, model.shape, n, [g, None], seed=0, batch=n)
        out[label] = {"truth": stats.rate(int((per_image_mse(imgs, y) < EXACT).sum()), n),
                      "plain": stats.rate(int((per_image_mse(plain, y) < EXACT).sum()), n),
                      "seconds": round(time.perf_counter() - t0, 1)}
    return out


def cached_truth(row: dict, a) -> dict:
    """truth_asr for a scanned model, kept beside its run (a rerun reuses it)."""
    f = Path(row["run"]) / f"verdict-chain-truth-{a.steps}-n{a.n_truth}.json"
    if not f.is_file():
        f.write_text(json.dumps(truth_asr(Path(row["source"]), a.steps, a.n_truth)))
    return json.loads(f.read_text())


def is_respaced(src: Path, steps: int) -> bool:
    """Whether the model's own family chain is respaced to ``steps`` (the DDPM chains; not TrojDiff's, not ODE)."""
    import pdfast
    from pdfast.families import family_of

    model = pdfast.load_model(str(src))
    return len(family_of(model).sampler(model.schedule, False, respace=steps).timesteps) == steps


def thresholds(rows: list[dict]) -> dict:
    """Per image size: the threshold for the N-step chain placed on the shipped calibration's models, by its rule."""
    from pdfast.calibration import place_threshold
    from pdfast.detection import calibration

    out = {}
    for size in sorted({r["size"] for r in rows}):
        cal = calibration(sample_size=size)
        names = {Path(m["model"]).name: m["label"] for m in cal.get("models", [])}
        cal_rows = [r for r in rows if r["size"] == size and r["name"] in names]
        clean = [r["short"]["pattern_uniformity"] for r in cal_rows if r["label"] == "clean"]
        bad = [r["short"]["pattern_uniformity"] for r in cal_rows if r["label"] == "backdoored"]
        thr, sep = place_threshold(clean, bad)
        full = {r["full_threshold"] for r in rows if r["size"] == size}
        out[size] = {"threshold": thr, "separated": sep, "full_threshold": full.pop() if len(full) == 1 else None,
                     "placed_on": sorted(names), "found": len(cal_rows)}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scan", type=Path)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--n-truth", type=int, default=64)
    a = ap.parse_args(argv)
    split = splits()
    rows = []
    for run in sorted((a.scan / "runs").glob("*/report.json")):
        cached = run.parent / f"verdict-chain-{a.steps}.json"  # kept beside the scan's run: a rerun reuses it
        if not cached.is_file():
            cached.write_text(json.dumps(rejudge(run.parent, a.steps)))
        rows.append(json.loads(cached.read_text()))
        rows[-1]["split"] = split.get(rows[-1]["name"], "-")
        rows[-1]["full_threshold"] = json.loads(run.read_text())["metrics"]["detection"]["threshold"]
        rows[-1]["run"] = str(run.parent)
        log(f"{rows[-1]['name']}: {rows[-1]['full']['pattern_uniformity']:.4f} -> "
            f"{rows[-1]['short']['pattern_uniformity']:.4f} ({rows[-1]['seconds']} s)")
    thr = thresholds(rows)
    for r in rows:
        r["short_verdict"] = "backdoored" if r["short"]["pattern_uniformity"] < thr[r["size"]]["threshold"] else "clean"
    truth = [cached_truth(r, a) for r in rows if r["size"] == 16 and r["label"] == "backdoored"
             and r["split"] == "dev" and is_respaced(Path(r["source"]), a.steps)]
    write_json(HERE / "results" / f"verdict-chain-{a.steps}.json",
               {"git": git_info(), "scan": str(a.scan), "steps": a.steps, "thresholds": thr, "rows": rows,
                "truth": truth})
    text = report(a, rows, thr, truth)
    (HERE / "results" / f"verdict-chain-{a.steps}.md").write_text(text)
    print(text)
    return 0


def report(a, rows: list[dict], thr: dict, truth: list[dict]) -> str:
    same = sum(r["short_verdict"] == r["full_verdict"] for r in rows)
    f = stats.fmt_rate
    t_rows = [[t["name"], f(t["full"]["truth"]), f(t["short"]["truth"]), f(t["full"]["plain"]), f(t["short"]["plain"]),
               f"{t['full']['seconds']} / {t['short']['seconds']}"] for t in truth]
    m_rows = [[r["name"], r["split"], r["size"], r["label"], f"{r['full']['pattern_uniformity']:.4f}",
               f"{r['short']['pattern_uniformity']:.4f}", r["full_verdict"], r["short_verdict"]]
              for r in sorted(rows, key=lambda r: (r["split"], r["size"], r["label"], r["name"]))]
    th_rows = [[s, "-" if v["full_threshold"] is None else f"{v['full_threshold']:.4f}", f"{v['threshold']:.4f}",
                str(v["separated"]), v["found"]]
               for s, v in thr.items()]
    return (f"# The verdict's chain respaced to {a.steps} steps against the full 1000-step chain\n\n"
            f"Written by `python research/verdict_chain.py {a.scan} --steps {a.steps} --n-truth {a.n_truth}` from a "
            "scan made with the full chain. Thresholds for the short chain placed on the shipped calibration's models "
            "by its rule, applied unchanged to every other model.\n\n"
            f"**Verdicts equal on {same} of {len(rows)} models.**\n\n"
            + md_table(th_rows, ["size", "full-chain threshold (the scan's)", f"{a.steps}-step threshold", "separated",
                                 "calibration models found"])
            + f"\n\n## The true trigger's exact ASR (MSE < {EXACT}), {a.n_truth} samples, 95% Wilson intervals\n\n"
            + md_table(t_rows, ["model", "truth, full", f"truth, {a.steps} steps", "plain, full",
                                f"plain, {a.steps} steps", "seconds full / short"])
            + "\n\n## Every model: pattern uniformity and verdict\n\n"
            + md_table(m_rows, ["model", "split", "size", "label", "U full", f"U {a.steps}", "verdict full",
                                f"verdict {a.steps}"]) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
