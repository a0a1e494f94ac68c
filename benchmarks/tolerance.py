"""A tolerance honest about chaos (issue 23): the old and the new code, several inversion seeds each, judged the same.

    OMP_NUM_THREADS=1 python benchmarks/tolerance.py --before /path/to/old/checkout \\
        [--models demo,research/zoo/v2/models/v2-bd16-stop18-cat,...] [--seeds 0,1,2] [--steps 50] [--n 64]

The inversion is chaotic (a last-bit change of the arithmetic gives a different trigger after a few Adam steps), so
"the same trigger" is not the bar. Per model, each tree runs `pdfast invert --steps K --seed s` for every seed (one
scale cache per tree and model: the surrogate table is computed once per tree, as a user's second run finds it);
then every trigger, old and new, is measured by the same evaluator (this tree's pdfast.evaluation, the model's own
full sampling chain, n samples, one noise seed): exact ASR (MSE < 0.02 in [0, 1]) and the pattern cosine to the
true trigger. The new code passes on a model when its verdict is the old code's on every seed and each of its
seeds' exact ASR and cosine lies within the old seeds' range or above it.

Writes benchmarks/results/tolerance-<device>.md/.json; old runs are kept under --work (reused by a rerun).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import common
from common import header, md_table, write
from readme_job import prepare_old

ROOT = Path(__file__).resolve().parents[1]
EXACT = 0.02
DEFAULT_MODELS = ("demo", "research/zoo/v2/models/v2-bd16-stop18-cat",
                  "research/zoo/v2/models/v2-fam-bd16-stop18-cat")


def invert(tree: Path, model: str, seed: int, steps: int, out: Path, cache: Path, extra: tuple = ()) -> dict:
    """One `pdfast invert` from ``tree`` (reused when its report exists), ``extra``: more options; its report.json."""
    rep = out / "report.json"
    if not rep.is_file():
        cache.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, PYTHONPATH=str(tree), PDFAST_CACHE_DIR=str(cache), PDFAST_KERNELS="torch")
        cmd = [sys.executable, "-c", "from pdfast.cli import main; main()", "invert", "--steps", str(steps),
               "--seed", str(seed), "--out", str(out), "--json", "--no-progress", "--device", "cpu", *extra]
        if model != "demo":
            cmd += ["--model", str((ROOT / model).resolve())]
        # cwd outside every tree: `python -c` puts the working directory ahead of PYTHONPATH on sys.path
        subprocess.run(cmd, env=env, cwd=cache.parent, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
    return json.loads(rep.read_text())


def measure(model_path: str, trigger_file: Path, n: int) -> dict:
    """Exact ASR over n samples (the model's full chain, noise seed 0) and pattern cosine to the true trigger."""
    from safetensors.torch import load_file

    import pdfast
    from pdfast.evaluation import evaluate_trigger
    from pdfast.loading import load_ground_truth
    from pdfast.metrics import fidelity

    model = pdfast.load_model(pdfast.demo_path() if model_path == "demo" else ROOT / model_path)
    trigger = load_file(str(trigger_file))["trigger"]
    ev = evaluate_trigger(model, trigger, n=n, threshold=EXACT, clean=False)
    g, _ = load_ground_truth(model)
    return {"asr_exact": ev["asr"], "pattern_cos": fidelity(trigger, g)["pattern_cos"]}


def same_trigger(a: Path, b: Path) -> bool:
    """Whether two runs' triggers are bit-equal."""
    import torch
    from safetensors.torch import load_file

    fa, fb = a / "trigger.safetensors", b / "trigger.safetensors"
    if not (fa.is_file() and fb.is_file()):
        return False
    x, y = load_file(str(fa))["trigger"], load_file(str(fb))["trigger"]
    return x.shape == y.shape and torch.equal(x, y)


def within(new: dict, old: list[dict]) -> dict:
    """Per quantity: the new value within the old seeds' range, or above it."""
    return {k: new[k] >= min(o[k] for o in old) - 1e-12 for k in ("asr_exact", "pattern_cos")}


def run_model(model: str, trees: dict, a) -> dict:
    name = Path(model).name
    res = {}
    for side, tree in trees.items():
        rows = []
        for s in a.seeds:
            out = a.work / side / name / f"seed{s}"
            rep = invert(tree, model, s, a.steps, out, a.work / side / name / "cache")
            cached = out / f"measure-n{a.n}.json"  # the evaluation of this trigger, kept beside it for a rerun
            twin = a.work / "before" / name / f"seed{s}"  # the old code's trigger of the same seed
            if not cached.is_file() and side == "after" and same_trigger(out, twin) and \
                    (twin / cached.name).is_file():  # bit-equal triggers measure the same: reuse, say so
                cached.write_text(json.dumps({**json.loads((twin / cached.name).read_text()), "same_trigger": True}))
            if not cached.is_file():
                cached.write_text(json.dumps(measure(model, out / "trigger.safetensors", a.n)))
            rows.append({"seed": s, "verdict": rep["metrics"]["detection"]["verdict"],
                         "wall_s": rep["timings"]["total_seconds"], **json.loads(cached.read_text())})
            print(f"{name} {side} seed {s}: {rows[-1]}", file=sys.stderr)
        res[side] = rows
    old_verdicts = {r["verdict"] for r in res["before"]}
    checks = [within(r, res["before"]) for r in res["after"]]
    res["same_verdict"] = len(old_verdicts) == 1 and all(r["verdict"] in old_verdicts for r in res["after"])
    res["within"] = all(all(c.values()) for c in checks)
    return res


def table(results: dict) -> str:
    cols = ["model", "code", "verdict per seed", "exact ASR per seed", "pattern cosine per seed", "run s per seed"]
    rows = []
    for name, r in results.items():
        for side in ("before", "after"):
            xs = r[side]
            rows.append(dict(zip(cols, [name, side + (" (triggers bit-equal to before)" if side == "after" and all(
                x.get("same_trigger") for x in xs) else ""), " ".join(x["verdict"] for x in xs),
                                        " ".join(f"{x['asr_exact']:.2f}" for x in xs),
                                        " ".join(f"{x['pattern_cos']:.3f}" for x in xs),
                                        " ".join(f"{x['wall_s']:.0f}" for x in xs)])))
        rows.append({"model": name, "code": "**check**",
                     "verdict per seed": "same" if r["same_verdict"] else "**DIFFERENT**",
                     "run s per seed": "within or above the old range" if r["within"] else "**OUTSIDE the old range**"})
    return md_table(rows, cols)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", type=Path, required=True, help="checkout of the code before the change")
    ap.add_argument("--models", default=",".join(DEFAULT_MODELS))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--n", type=int, default=64, help="samples per trigger for the exact ASR")
    ap.add_argument("--work", type=Path, default=Path("/tmp/pdfast-tolerance"))
    a = ap.parse_args(argv)
    a.seeds = [int(s) for s in a.seeds.split(",")]
    if not (a.before / "pdfast" / "__init__.py").is_file():
        print(f"error: {a.before} is not a pdfast checkout; pass --before with one (git worktree add DIR REV)",
              file=sys.stderr)
        return 2
    prepare_old(a.before)
    trees = {"before": a.before.resolve(), "after": ROOT}
    results = {Path(m).name: run_model(m, trees, a) for m in a.models.split(",")}
    ok = all(r["same_verdict"] and r["within"] for r in results.values())
    cmd = "OMP_NUM_THREADS=1 python benchmarks/tolerance.py " + " ".join(sys.argv[1:] if argv is None else argv)
    text = (table(results) + f"\n\n`pdfast invert --steps {a.steps}`, seeds {a.seeds}; exact ASR over {a.n} samples "
            f"of the model's full chain (MSE < {EXACT}), the same evaluator for both trees. "
            f"**{'PASS' if ok else 'FAIL'}**: the same verdict on every seed, the new exact ASR and pattern cosine "
            "within the old seeds' range or above it on every model.")
    write(f"tolerance-{common.device_slug('cpu')}", {**header(), "command": cmd, "results": results, "pass": ok},
          text)
    print(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
