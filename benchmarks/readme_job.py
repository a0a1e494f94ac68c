"""The README job (`pdfast invert --steps 50` on the demo model, cold cache) before and after a change, side by side.

    python benchmarks/readme_job.py --before /path/to/old/checkout [--rounds 2] [--steps 50] [--threads N]

Runs the job from the old checkout (PYTHONPATH, with pdfast/kernels linked to its kernels/) and from this tree,
alternating (ABBA...), each in a fresh process with an empty scale cache; reports per phase (start-up, surrogate
calibration, inversion, verdict sampling) the medians and their ratio, and whether the triggers and verdicts are
identical. Each job runs with torch's own thread count (every core, as a user runs it) unless --threads is given.
Writes benchmarks/results/readme-job-<device>.md/.json. The kernels run on their torch references in both
(PDFAST_KERNELS=torch): the job as `pip install .` gives it, without the optional native build.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common
from common import md_table

ROOT = Path(__file__).resolve().parents[1]
PHASES = ("startup_s", "calibration_s", "inversion_s", "sampling_s", "wall_s")


def run_job(tree: Path, steps: int, workdir: Path, *, kernels: str = "torch", threads: int | None = None,
            cache: Path | None = None, extra: tuple[str, ...] = ()) -> dict:
    """One run of the job from ``tree`` (cold: a fresh scale cache under ``workdir`` unless ``cache`` is given;
    ``extra``: more `pdfast invert` options); phase seconds from its report.json and the process wall time."""
    env = dict(os.environ, PYTHONPATH=str(tree), PDFAST_CACHE_DIR=str(cache or workdir / "cache"),
               PDFAST_KERNELS=kernels)
    env.pop("OMP_NUM_THREADS", None)  # the job as a user runs it: torch's own thread count (every core)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    out = workdir / "out"
    cmd = [sys.executable, "-c", "from pdfast.cli import main; main()", "invert", "--steps", str(steps), "--out",
           str(out), "--json", "--no-progress", "--device", "cpu", *extra]
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, cwd=workdir, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    rep = json.loads((out / "report.json").read_text())
    t = rep["timings"]
    from safetensors.torch import load_file

    return {"wall_s": wall, "calibration_s": t["scales_seconds"], "inversion_s": t["inversion_seconds"],
            "sampling_s": t.get("evaluation_seconds", 0.0), "startup_s": wall - t["total_seconds"],
            "verdict": rep["metrics"]["detection"]["verdict"],
            "trigger": load_file(str(out / "trigger.safetensors"))["trigger"]}


def prepare_old(tree: Path) -> None:
    """The old checkout imports as `pdfast` with its kernels/ reachable as pdfast.kernels (as setuptools maps it)."""
    link = tree / "pdfast" / "kernels"
    if not link.exists():
        link.symlink_to(tree / "kernels")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", type=Path, required=True, help="checkout of the code before the change")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of each job (default: unset)")
    a = ap.parse_args(argv)
    if not (a.before / "pdfast" / "__init__.py").is_file():
        print(f"error: {a.before} is not a pdfast checkout; pass --before with one (git worktree add DIR REV)",
              file=sys.stderr)
        return 2
    prepare_old(a.before)
    runs: dict[str, list[dict]] = {"before": [], "after": []}
    for r in range(a.rounds):
        for name in (("before", "after") if r % 2 == 0 else ("after", "before")):
            with tempfile.TemporaryDirectory() as d:
                runs[name].append(run_job(a.before if name == "before" else ROOT, a.steps, Path(d), threads=a.threads))
            print(f"round {r} {name}: {runs[name][-1]['wall_s']:.1f} s", file=sys.stderr)
    rows = []
    for ph in PHASES:
        b, n = (statistics.median(x[ph] for x in runs[k]) for k in ("before", "after"))
        rows.append({"phase": ph.removesuffix("_s"), "before s": round(b, 1), "after s": round(n, 1),
                     "after / before": f"{n / b:.2f}"})
    same = max(float((x["trigger"] - y["trigger"]).abs().max()) for x in runs["before"] for y in runs["after"])
    verdicts = sorted({x["verdict"] for k in runs for x in runs[k]})
    note = (f"\n\nMax |trigger after - trigger before| over all run pairs: {same:.3g}; verdicts: {', '.join(verdicts)}."
            f" {a.rounds} rounds per side, alternating (ABBA); medians; threads per job: {a.threads or 'torch default'}.")
    table = md_table(rows, ["phase", "before s", "after s", "after / before"]) + note
    common.publish("readme_job.py", "readme-job", argv, table, rows=rows, max_trigger_diff=same, verdicts=verdicts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
