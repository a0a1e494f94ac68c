"""Cheaper inversion settings against the tolerance bar (issue 23): what each saves in network calls and what it costs
in trigger quality, on the models of benchmarks/tolerance.py, one seed.

    OMP_NUM_THREADS=1 python benchmarks/speed_frontier.py [--models demo,...] [--seed 0] [--n 64]

Per model and candidate (options over today's defaults): `pdfast invert --steps 50 --seed S` from this tree, the
trigger measured by tolerance.py's evaluator (exact ASR over n samples of the full chain, pattern cosine to the
truth); beside it the old code's seed range from benchmarks/results/tolerance-<device>.json (the bar: at or above
its lowest seed, and the same verdict). Network calls are the engine's count (the inversion's cost in UNet
forward-and-backward calls, without the selection's sampling); seconds ran one thread beside one other job, so
only their order is comparable. Runs are kept under --work and reused, so disjoint --models can run in parallel;
a last run with every model writes benchmarks/results/speed-frontier-<device>.md/.json.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import common
from common import header, md_table, write
from tolerance import DEFAULT_MODELS, ROOT, invert, measure, within

CHEAP_SURROGATE = ("--surrogate-steps", "100", "--surrogate-n-images", "128", "--surrogate-pool-steps", "25")
CANDIDATES = {
    "defaults": (),
    "coarse 30 + search 1 + refine 10": ("--coarse-epochs", "30", "--epochs", "1", "--refine-epochs", "10",
                                         *CHEAP_SURROGATE),
    "coarse 20 + search 8, no refine": ("--coarse-epochs", "20", "--epochs", "8", "--refine-epochs", "0",
                                        *CHEAP_SURROGATE),
    "search 10 + refine 10, batch 20": ("--epochs", "10", "--refine-epochs", "10", "--batch", "20", *CHEAP_SURROGATE),
    "search 10, no refine": ("--epochs", "10", "--refine-epochs", "0", *CHEAP_SURROGATE),
}


def old_range(name: str) -> list[dict] | None:
    """The old code's seeds on this model (the before rows of tolerance.py's committed run), or None."""
    f = common.RESULTS / f"tolerance-{common.device_slug('cpu')}.json"
    if not f.is_file():
        return None
    return json.loads(f.read_text())["results"].get(name, {}).get("before") or None


def run(model: str, cand: str, a) -> dict:
    name = Path(model).name
    out = a.work / name / cand.replace(" ", "_").replace(",", "").replace("+", "p")
    rep = invert(ROOT, model, a.seed, 50, out, a.work / name / "cache", CANDIDATES[cand])
    cached = out / f"measure-n{a.n}.json"
    if not cached.is_file():
        cached.write_text(json.dumps(measure(model, out / "trigger.safetensors", a.n)))
    t = rep["timings"]
    return {"model": name, "candidate": cand, "calls": t["network_calls"], "inversion_s": t["inversion_seconds"],
            "verdict": rep["metrics"]["detection"]["verdict"], "chosen": (rep.get("selection") or {}).get("chosen"),
            **json.loads(cached.read_text())}


def passes(r: dict, old: list[dict] | None) -> str:
    """tolerance.py's rule for one seed: the old verdict and, per quantity, within the old seeds' range or above."""
    if old is None:
        return "-"
    ok = all(within(r, old).values()) and {r["verdict"]} == {o["verdict"] for o in old}
    return "yes" if ok else "**no**"


def old_cell(old: list[dict] | None) -> str:
    if not old:
        return "-"
    return (" ".join(f"{o['asr_exact']:.2f}" for o in old) + " / " + " ".join(f"{o['pattern_cos']:.3f}" for o in old)
            + " / " + ",".join(sorted({o["verdict"] for o in old})))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(DEFAULT_MODELS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n", type=int, default=64, help="samples per trigger for the exact ASR")
    ap.add_argument("--work", type=Path, default=Path("/tmp/pdfast-frontier"))
    a = ap.parse_args(argv)
    rows = []
    for model in a.models.split(","):
        old = old_range(Path(model).name)
        for cand in CANDIDATES:
            r = run(model, cand, a)
            r["old"] = old
            r["meets_bar"] = passes(r, old)
            rows.append(r)
            print(json.dumps(r), file=sys.stderr, flush=True)
    cols = ["model", "candidate", "network calls", "inversion s", "stage kept", "verdict", "exact ASR", "cosine",
            "old seeds: ASR / cosine / verdict", "at or above the old range"]
    table = md_table([dict(zip(cols, [r["model"], r["candidate"], r["calls"], f"{r['inversion_s']:.0f}",
                                      r["chosen"] or "-", r["verdict"], f"{r['asr_exact']:.2f}",
                                      f"{r['pattern_cos']:.3f}",
                                      old_cell(r["old"]), r["meets_bar"]])) for r in rows], cols)
    cmd = "OMP_NUM_THREADS=1 python benchmarks/speed_frontier.py " + " ".join(sys.argv[1:] if argv is None else argv)
    text = (table + f"\n\n`pdfast invert --steps 50 --seed {a.seed}` with each candidate's options over the defaults "
            f"(every candidate but the defaults with the surrogate at 100 steps on 128 DDIM-25 images); exact ASR over "
            f"{a.n} samples of the full chain (MSE < 0.02); network calls: the inversion's UNet forward-and-backward "
            "calls (the selection's sampling not counted); seconds: one thread beside one other job (their order only). "
            "Candidates: "
            + "; ".join(f"{k}: `{' '.join(v) or '(none)'}`" for k, v in CANDIDATES.items()) + ".")
    write(f"speed-frontier-{common.device_slug('cpu')}", {**header(), "command": cmd, "rows": rows}, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
