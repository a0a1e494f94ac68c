"""The benchmark suite as a regression guard: time the CPU cases and compare their medians with a committed baseline.

    python benchmarks/regress.py                    # run, compare with benchmarks/results/baseline-<machine class>.json
    python benchmarks/regress.py --update-baseline  # run --runs times (default 3), write the baseline and its noise

It runs pytest on SUITE (the CPU cases; GPU ones are deselected) with benchmarks enabled, OMP_NUM_THREADS=1, a fixed
number of rounds per case (--rounds; --benchmark-max-time=0 so that pytest-benchmark adds none), rounds of at least
MIN_ROUND_S (short ops are looped inside a round), the process's CPU time as the timer (--timer; see TIMERS) and
--benchmark-json into a temporary file. A case whose median is over the tolerance is re-run up to --confirm times
and keeps its lowest median (keep_lower). Then it prints one row per case: baseline median, median now, their ratio
and a verdict, and exits

    0  every baseline case ran and none is slower than (1 + tolerance) x its baseline median
    1  a regression (ratio > 1 + tolerance), or a baseline case that did not run ("missing": renamed, skipped,
       failed) unless --allow-missing
    2  no baseline for this machine class, or the suite itself failed to run

The tolerance is the baseline file's (chosen from the run-to-run noise measured when it was written, recorded beside
it), unless --tolerance overrides it. Timings are never compared across machine classes: the baseline file is named
after this machine's (CPU model and core count), and none of this gates CI (CI runs the same files with
--benchmark-disable, each body once). benchmarks/README.md has the numbers and how to refresh the baseline.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
SCHEMA = "pdfast.bench.baseline/1"
# the CPU cases timed: the chain step (engines, sampling step), each fused op per backend, the README job's phases
SUITE = ["benchmarks/test_bench_engine.py", "benchmarks/test_bench_native.py", "benchmarks/test_bench_job.py"]
ROUNDS = 5
MIN_ROUND_S = 0.02  # short ops are looped inside a round until it lasts this long
# cpu: the process's CPU time (time.process_time), which leaves out the time the process waits for a core on a
# shared machine (on the 2-core VM the baseline was measured on, wall-time medians of the fused ops swung 2-3.4x
# between runs with the load, CPU-time ones mostly within 1.2x: benchmarks/README.md); wall: time.perf_counter, for quiet
# machines. The suite runs one thread (OMP_NUM_THREADS=1, benchmarks/conftest.py), so CPU time is that thread's compute;
# what it does not see is time spent waiting (sleeps, I/O, locks), which these cases do not do.
TIMERS = {"cpu": "time.process_time", "wall": "time.perf_counter"}
DEFAULT_TOLERANCE = 0.5  # chosen from the measured run-to-run noise: benchmarks/README.md


# ---------------------------------------------------------------- machine


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_class() -> str:
    """'cpu-amd-epyc-2c': the CPU model (as the OS reports it) and the number of cores, file-name safe."""
    name = re.sub(r"\((r|tm)\)", "", cpu_model().lower())
    slug = re.sub(r"[^a-z0-9]+", "-", name).strip("-")[:40].strip("-") or "unknown"
    return f"cpu-{slug}-{os.cpu_count()}c"


def default_baseline() -> Path:
    return RESULTS / f"baseline-{machine_class()}.json"


def environment() -> dict:
    """What a timing depends on besides the code: CPU, cores, threads, versions, the fused ops' CPU backends."""
    import torch

    import pdfast
    import pdfast.kernels as K

    return {
        "machine_class": machine_class(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "threads": "OMP_NUM_THREADS=1, MKL_NUM_THREADS=1 (set for the pytest run), torch.set_num_threads(1)",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pdfast": getattr(pdfast, "__version__", None),
        "pdfast_kernels_env": os.environ.get("PDFAST_KERNELS"),
        "kernels_cpu": K.backends("cpu"),
        "native": K.native.status(),
        "load_average": _loadavg(),
    }


def git_commit() -> str | None:
    """HEAD, and whether the working tree differs from it (read only)."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, text=True, capture_output=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, text=True,
                               capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return head.stdout.strip() + (" with uncommitted changes" if dirty.stdout.strip() else "")


def _loadavg():
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


# ---------------------------------------------------------------- running the suite


def pytest_command(json_path: Path, rounds: int, timer: str = "cpu", cases=None) -> list[str]:
    """The pytest run of SUITE, or of just `cases` (node ids) when given."""
    return [sys.executable, "-m", "pytest", *(cases or SUITE), "-q", "-p", "no:cacheprovider", "-m", "not gpu",
            "--benchmark-enable", "--benchmark-only", f"--benchmark-timer={TIMERS[timer]}",
            f"--benchmark-min-rounds={rounds}", "--benchmark-max-time=0", f"--benchmark-min-time={MIN_ROUND_S}",
            f"--benchmark-json={json_path}"]


def run_suite(rounds: int, timer: str, keep: Path | None = None, cases=None) -> tuple[dict, int, str]:
    """(cases, pytest's exit code, its output's tail) of one run of the suite (or of `cases`); its JSON also saved
    to `keep`."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run.json" if keep is None else keep.resolve()
        out.parent.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(pytest_command(out, rounds, timer, cases), cwd=ROOT, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        cases = cases_from_pytest_json(json.loads(out.read_text())) if out.is_file() else {}
    return cases, proc.returncode, proc.stdout[-4000:]


# ---------------------------------------------------------------- comparison (pure: benchmarks/test_regress.py)


def cases_from_pytest_json(obj: dict) -> dict:
    """{case: {"median", "iqr", "min", "rounds", "extra_info"}} (seconds per call) from pytest-benchmark's JSON;
    the case is the test's node id (file::test[params])."""
    cases = {}
    for b in obj.get("benchmarks", []):
        s = b["stats"]
        cases[b["fullname"]] = {"median": s["median"], "iqr": s["iqr"], "min": s["min"], "rounds": s["rounds"],
                                "extra_info": b.get("extra_info") or {}}
    return cases


def compare(baseline: dict, current: dict, tolerance: float) -> list[dict]:
    """One row per case of either side: baseline and current median, ratio current / baseline, verdict:
    "ok"; "REGRESSION" (ratio > 1 + tolerance); "faster" (ratio < 1 / (1 + tolerance): refresh the baseline);
    "missing" (in the baseline, not in this run); "new" (not in the baseline). Cases are matched by file name and
    test (``short``), not by folder, so a baseline outlives a move of the suite (bench/ became benchmarks/); a row's
    case is this run's node id (what a re-run passes to pytest), the baseline's for a missing case."""
    base = {short(k): (k, v) for k, v in baseline.items()}
    now = {short(k): (k, v) for k, v in current.items()}
    rows = []
    for key in sorted(set(base) | set(now)):
        (base_id, b), (now_id, c) = base.get(key, (None, None)), now.get(key, (None, None))
        case = now_id or base_id
        row = {"case": case, "baseline": b and b["median"], "now": c and c["median"], "ratio": None, "note": ""}
        if c and c.get("runs", 1) > 1:
            row["note"] = f"lowest of {c['runs']} runs"
        if b and c and b.get("extra_info", {}) != c.get("extra_info", {}):  # e.g. the fused ops' backend changed
            changed = [f"{k}: {b['extra_info'].get(k)} -> {c['extra_info'].get(k)}"
                       for k in sorted(set(b["extra_info"]) | set(c["extra_info"]))
                       if b["extra_info"].get(k) != c["extra_info"].get(k)]
            row["note"] = "; ".join(([row["note"]] if row["note"] else []) + changed)
        if c is None:
            row["verdict"] = "missing"
        elif b is None:
            row["verdict"] = "new"
        else:
            row["ratio"] = c["median"] / b["median"]
            row["verdict"] = ("REGRESSION" if row["ratio"] > 1 + tolerance
                              else "faster" if row["ratio"] < 1 / (1 + tolerance) else "ok")
        rows.append(row)
    return rows


def keep_lower(current: dict, again: dict) -> dict:
    """`current` with each case re-measured in `again` replaced by the run with the lower median; "runs" counts the
    runs a case has had. Background load only ever slows a run down, so a slowdown that is real persists in the
    lowest of several runs while a noisy run does not."""
    out = dict(current)
    for case, c in again.items():
        if case in out:
            runs = out[case].get("runs", 1) + 1
            out[case] = {**(c if c["median"] < out[case]["median"] else out[case]), "runs": runs}
    return out


def failed(rows: list[dict], allow_missing: bool = False) -> bool:
    bad = {"REGRESSION"} if allow_missing else {"REGRESSION", "missing"}
    return any(r["verdict"] in bad for r in rows)


def _ms(seconds) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.4g}"


def short(case: str) -> str:
    """benchmarks/test_bench_engine.py::test_x[p] -> test_bench_engine::test_x[p]"""
    path, _, rest = case.partition("::")
    return f"{Path(path).stem}::{rest}" if rest else case


def table(rows: list[dict]) -> str:
    out = ["| case | baseline median ms | now ms | ratio | verdict |", "|---|---:|---:|---:|---|"]
    for r in rows:
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}"
        note = f" ({r['note']})" if r.get("note") else ""
        out.append(f"| {short(r['case'])} | {_ms(r['baseline'])} | {_ms(r['now'])} | {ratio} | {r['verdict']}{note} |")
    return "\n".join(out)


def summary(rows: list[dict], tolerance: float, allow_missing: bool) -> str:
    count = {v: sum(r["verdict"] == v for r in rows) for v in ("ok", "faster", "REGRESSION", "missing", "new")}
    ratios = [r["ratio"] for r in rows if r["ratio"] is not None]
    geo = statistics.geometric_mean(ratios) if ratios else None
    verdict = "FAIL" if failed(rows, allow_missing) else "PASS"
    parts = [f"{k} {n}" for k, n in count.items() if n]
    return (f"{verdict}: tolerance +{tolerance:.0%} on the median; {', '.join(parts)}"
            + (f"; geometric mean ratio {geo:.2f}" if geo else "")
            + ("; missing cases allowed" if allow_missing and count["missing"] else ""))


def merge_runs(runs: list[dict]) -> tuple[dict, dict]:
    """The baseline from several runs of the suite: per case the median of the run medians, and its noise: the
    spread max/min of the run medians (cases present in every run only)."""
    shared = set.intersection(*(set(r) for r in runs)) if runs else set()
    cases, spread = {}, {}
    for case in sorted(shared):
        meds = [r[case]["median"] for r in runs]
        cases[case] = {"median": statistics.median(meds), "run_medians": meds,
                       "rounds": runs[0][case]["rounds"], "extra_info": runs[0][case]["extra_info"]}
        spread[case] = max(meds) / min(meds)
    values = sorted(spread.values())
    noise = {"runs": len(runs), "spread_max_over_min": {short(c): round(v, 3) for c, v in spread.items()},
             "spread_median": round(statistics.median(values), 3) if values else None,
             "spread_p90": round(values[min(len(values) - 1, int(0.9 * len(values)))], 3) if values else None,
             "spread_worst": round(values[-1], 3) if values else None,
             "worst_case": short(max(spread, key=spread.get)) if spread else None}
    return cases, noise


def load_baseline(path: Path) -> dict:
    obj = json.loads(path.read_text())
    if obj.get("schema") != SCHEMA:
        raise ValueError(f"{path}: not a {SCHEMA} file")
    return obj


def environment_notes(base_env: dict, env: dict) -> list[str]:
    """Differences in what the timings depend on (printed, never a failure by themselves)."""
    notes = []
    for key in ("machine_class", "cpu", "torch", "python", "kernels_cpu", "pdfast_kernels_env"):
        if base_env.get(key) != env.get(key):
            notes.append(f"note: {key} differs: baseline {base_env.get(key)!r}, now {env.get(key)!r}")
    return notes


# ---------------------------------------------------------------- command line


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", type=Path, default=None,
                   help="baseline file (default benchmarks/results/baseline-<machine class>.json)")
    p.add_argument("--tolerance", type=float, default=None,
                   help="allowed slowdown of a median, as a fraction (0.5 = 50%%); default: the baseline's")
    p.add_argument("--rounds", type=int, default=ROUNDS, help=f"timed rounds per case (default {ROUNDS})")
    p.add_argument("--timer", choices=list(TIMERS), default=None,
                   help="cpu (process CPU time) or wall (perf_counter); default: the baseline's, cpu for a new one")
    p.add_argument("--allow-missing", action="store_true", help="baseline cases that did not run do not fail")
    p.add_argument("--confirm", type=int, default=2, metavar="N",
                   help="re-run a case over the tolerance up to N times and keep its lowest median (default 2)")
    p.add_argument("--json", type=Path, default=None, metavar="RUN",
                   help="compare this pytest-benchmark --benchmark-json file instead of running the suite")
    p.add_argument("--keep-json", type=Path, default=None, help="also save this run's pytest-benchmark JSON here")
    p.add_argument("--update-baseline", action="store_true",
                   help="run the suite --runs times and write the baseline (medians, their spread, environment)")
    p.add_argument("--runs", type=int, default=3, help="runs for --update-baseline (default 3)")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    path = args.baseline or default_baseline()

    if args.update_baseline:
        return update_baseline(path, args)
    if not path.is_file():
        print(f"error: no baseline {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path} for this machine "
              f"class ({machine_class()}); write one with `python benchmarks/regress.py --update-baseline` on a quiet "
              "machine, or pass --baseline", file=sys.stderr)
        return 2
    base = load_baseline(path)
    tolerance = args.tolerance if args.tolerance is not None else base.get("tolerance", DEFAULT_TOLERANCE)
    timer = base.get("timer", "cpu")
    if args.timer not in (None, timer):
        print(f"error: the baseline was timed with the {timer} timer, not {args.timer}", file=sys.stderr)
        return 2

    if args.json:
        current, rc = cases_from_pytest_json(json.loads(args.json.read_text())), 0
    else:
        print(f"running the suite: {args.rounds} rounds per case, {timer} time, OMP_NUM_THREADS=1 ...",
              file=sys.stderr)
        current, rc, tail = run_suite(args.rounds, timer, args.keep_json)
        if rc != 0:
            print(tail, file=sys.stderr)
            print(f"error: the suite failed (pytest exit code {rc}); its cases are missing below", file=sys.stderr)
    rows = compare(base["cases"], current, tolerance)
    for attempt in range(0 if args.json else args.confirm):
        slower = [r["case"] for r in rows if r["verdict"] == "REGRESSION"]
        if not slower:
            break
        print(f"re-measuring {len(slower)} case(s) over the tolerance ({attempt + 1}/{args.confirm}) ...",
              file=sys.stderr)
        again, _, _ = run_suite(args.rounds, timer, cases=slower)
        current = keep_lower(current, again)
        rows = compare(base["cases"], current, tolerance)
    env = environment()
    print(f"baseline {path.name}: {base.get('date')}, {base['environment'].get('cpu')}, "
          f"torch {base['environment'].get('torch')}; medians of {timer} time per call")
    for note in environment_notes(base["environment"], env):
        print(note)
    print(table(rows))
    print(summary(rows, tolerance, args.allow_missing))
    if rc != 0 and not args.json:
        return 2
    return 1 if failed(rows, args.allow_missing) else 0


def update_baseline(path: Path, args) -> int:
    runs, envs = [], []
    args.timer = args.timer or "cpu"
    for i in range(args.runs):
        print(f"run {i + 1}/{args.runs}: {args.rounds} rounds per case, {args.timer} time, OMP_NUM_THREADS=1 ...",
              file=sys.stderr)
        envs.append(environment())  # the load average before each run
        cases, rc, tail = run_suite(args.rounds, args.timer, None if args.keep_json is None
                                    else args.keep_json.with_name(f"{args.keep_json.stem}-{i + 1}.json"))
        if rc != 0:
            print(tail, file=sys.stderr)
            print(f"error: the suite failed (pytest exit code {rc}); baseline not written", file=sys.stderr)
            return 2
        runs.append(cases)
    cases, noise = merge_runs(runs)
    dropped = sorted(set().union(*runs) - set(cases))
    if dropped:
        print(f"error: {len(dropped)} cases did not run in every run (skipped or failed in some), e.g. "
              f"{short(dropped[0])}; baseline not written", file=sys.stderr)
        return 2
    tolerance = args.tolerance if args.tolerance is not None else DEFAULT_TOLERANCE
    cmd = "OMP_NUM_THREADS=1 python benchmarks/regress.py --update-baseline" + "".join(
        f" {flag} {value}" for flag, value, default in (("--runs", args.runs, 3), ("--rounds", args.rounds, ROUNDS),
                                                        ("--timer", args.timer, "cpu"),
                                                        ("--tolerance", args.tolerance, None)) if value != default)
    obj = {
        "schema": SCHEMA,
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": cmd,
        "commit": git_commit(),
        "suite": "python " + shlex.join(pytest_command(Path("RUN.json"), args.rounds, args.timer)[1:]),
        "timer": args.timer,
        "rounds": args.rounds,
        "environment": {**envs[0], "load_average_per_run": [e["load_average"] for e in envs]},
        "tolerance": tolerance,
        "noise": noise,
        "cases": cases,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1) + "\n")
    print(f"wrote {path} ({len(cases)} cases, tolerance +{tolerance:.0%})")
    print(f"run-to-run spread (slowest / fastest median of a case over {noise['runs']} runs): median "
          f"{noise['spread_median']}, 90th percentile {noise['spread_p90']}, worst {noise['spread_worst']} "
          f"({noise['worst_case']})")
    if noise["spread_worst"] and noise["spread_worst"] > 1 + tolerance:
        print(f"warning: the noise exceeds the tolerance +{tolerance:.0%}: a quieter machine or --tolerance "
              f"{noise['spread_worst'] - 1:.2f} or more", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
