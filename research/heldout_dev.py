"""Held-out dev check (issue 22): does `pdfast detect` with the shipped defaults and threshold hold on zoo v2 dev
models that are not among the calibration's rows (so did not place the threshold), and how does Elijah do beside it?

For each model folder given, two runs of the shipped CLI, each on one thread:

    pdfast detect --model M --out OUT/<model>/<method> --json [--method elijah]

and, for a backdoored model (its backdoor.json names the target), the inverted trigger's exact ASR:

    pdfast evaluate --model M --trigger OUT/<model>/<method>/trigger.safetensors -n 64 --seed 0 --no-clean --json

which draws the same 64 noises of the full chain as the zoo gate (seed 0), so the truth, plain noise, g's flat part and
a -0.5 frame from the model's zoo.json stand beside it sample for sample. The no-trigger statistic
(`plain_uniformity`: how alike plain samples from the verdict's noises are) is read from the same detect report.

    OMP_NUM_THREADS=1 python research/heldout_dev.py research/zoo/v2/models/NAME [...]

Resumable: a (model, method) whose record exists is read back, not re-run. Writes
research/results/heldout-dev/<model>/<method>.json (and the trigger) and research/results/heldout-dev.md.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import stats  # noqa: E402
from quality.base import write_json  # noqa: E402
from quality.tables import f4, md_table  # noqa: E402

OUT = HERE / "results" / "heldout-dev"
METHODS = ("puredif", "elijah")
N_SAMPLES = 64


def pdfast_exe() -> str:
    """The `pdfast` console script of the running interpreter's environment."""
    exe = Path(sys.executable).parent / "pdfast"
    return str(exe) if exe.exists() else "pdfast"


def run_json(argv: list[str]) -> tuple[dict, float]:
    """Run one pdfast command with --json; its parsed report and wall seconds (a failure raises with its stderr)."""
    t0 = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode not in (0,):
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return json.loads(done.stdout), round(time.perf_counter() - t0, 1)


def measure(model: Path, method: str, out: Path) -> dict:
    """detect (and, when the model has a target, evaluate) one model with one method; the record written."""
    record_path = out / model.name / f"{method}.json"
    if record_path.exists():
        return json.loads(record_path.read_text())
    run_dir = out / model.name / method
    detect = [pdfast_exe(), "detect", "--model", str(model), "--out", str(run_dir), "--json", "--no-progress"]
    if method != "puredif":
        detect += ["--method", method]
    report, detect_s = run_json(detect)
    record = {"model": model.name, "method": method, "commands": {"detect": " ".join(detect[1:])},
              "seconds": {"detect": detect_s}, "detect": report}
    if (model / "backdoor.json").exists():
        evaluate = [pdfast_exe(), "evaluate", "--model", str(model), "--trigger", str(run_dir / "trigger.safetensors"),
                    "-n", str(N_SAMPLES), "--seed", "0", "--no-clean", "--json"]
        record["evaluate"], record["seconds"]["evaluate"] = run_json(evaluate)
        record["commands"]["evaluate"] = " ".join(evaluate[1:])
    write_json(record_path, record)
    return record


def row(record: dict, zoo: dict) -> dict:
    """One table row: the verdict, its statistic, the no-trigger statistic, the firing beside the trivial starts."""
    m = record["detect"]["metrics"]
    gt = zoo.get("ground_truth") or {}
    ev = record.get("evaluate") or {}
    hits = (round(ev["asr"] * N_SAMPLES) if "asr" in ev else None)
    return {"model": record["model"], "label": "clean" if zoo["recipe"]["kind"].startswith("clean") else "backdoored",
            "method": record["method"], "verdict": m["detection"]["verdict"], "trigger_miss": m.get("trigger_miss"),
            "threshold": m["detection"]["threshold"], "plain_uniformity": m.get("plain_uniformity"),
            "medoid_hits": m.get("medoid_hits"), "exact_asr": ev.get("asr"), "paper_asr": ev.get("asr_paper"),
            "exact_asr_wilson": stats.wilson(hits, N_SAMPLES) if hits is not None else None,
            "l2_to_truth": m.get("l2"), "truth_asr": gt.get("asr"), "plain_asr": gt.get("clean_asr"),
            "flat_asr": gt.get("flat_asr"), "frame_asr": (gt.get("frame_asr") or {}).get("-0.5"),
            "seconds": record["seconds"]}


def table(rows: list[dict]) -> str:
    """The Markdown table of all rows."""
    def ci(r):
        w = r["exact_asr_wilson"]
        return "" if w is None else f"{r['exact_asr']:.2f} [{w[0]:.2f}, {w[1]:.2f}]"
    cells = [[r["model"], r["label"], r["method"], r["verdict"], f4(r["trigger_miss"]), f4(r["plain_uniformity"]),
              ci(r), f4(r["paper_asr"]), f4(r["truth_asr"]), f4(r["plain_asr"]), f4(r["flat_asr"]),
              f4(r["frame_asr"]), f4(r["l2_to_truth"])] for r in rows]
    return md_table(cells, ["model", "label", "method", "verdict", "trigger_miss (low = backdoored)",
                            "plain uniformity (no trigger)", "exact ASR [Wilson 95%]", "ASR at 0.1", "truth",
                            "plain noise", "g's flat part", "-0.5 frame", "L2 to truth"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", help="zoo model folders (each with its zoo.json)")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args(argv)
    out = Path(args.out)
    missing = [m for m in args.models if not (Path(m) / "zoo.json").exists()]
    if missing:
        ap.error(f"no zoo.json in {', '.join(missing)}: give models built by research/zoo/build.py")
    rows = []
    for model in map(Path, args.models):
        zoo = json.loads((model / "zoo.json").read_text())
        for method in args.methods.split(","):
            rows.append(row(measure(model, method, out), zoo))
            print(f"[heldout] {model.name} {method}: {rows[-1]['verdict']} "
                  f"(trigger_miss {f4(rows[-1]['trigger_miss'])}, exact ASR {f4(rows[-1]['exact_asr'])})", flush=True)
    write_json(out.with_suffix(".json"), {"models": [str(m) for m in args.models], "rows": rows})
    command = "OMP_NUM_THREADS=1 python research/heldout_dev.py " + " ".join(args.models)
    out.with_suffix(".md").write_text(
        "# Held-out dev check: pdfast detect's defaults on zoo v2 dev models outside the calibration rows\n\n"
        f"Written by `{command}` (research/heldout_dev.py). Exact ASR over {N_SAMPLES} samples of the full chain "
        "(seed 0, the zoo gate's noises), MSE < 0.02 in [0, 1]; truth, plain noise, g's flat part and the -0.5 frame "
        "from the model's zoo.json gate on the same noises. The threshold is the shipped one "
        f"({f4(rows[0]['threshold'])}). Per-run records and commands: research/results/heldout-dev/.\n\n"
        + table(rows) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
