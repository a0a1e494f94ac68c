"""The command line: run the planned units (resumable, two workers may share the cache), follow the zoo as it is
built, and regenerate the outputs after every finished unit."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import stats
from pdfast.errors import PdfastError

from . import __doc__ as DOC
from .base import CACHE, RECIPE, REPORT_JSON, REPORT_MD, SHEET, ZOO, git_info, log
from .cache import collect, entry_path, pdfast_cache, take_lock
from .codeversion import code_version
from .estimate import dry_run
from .measure import ModelCtx, error_entry, run_unit
from .planner import METHODS, Settings, Unit, plan
from .report import build_report
from .tables import f4
from .zoo import ZooModel, scan_zoo

FOLLOW_HOURS = 48  # --follow gives up waiting for the zoo build after this long


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=DOC, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zoo", type=Path, default=ZOO, help="folder of model folders (default research/zoo/models)")
    ap.add_argument("--recipe", type=Path, default=None,
                    help="recipe for the model order and --follow (default research/zoo/recipe.json with the default zoo)")
    ap.add_argument("--split", default="dev", choices=("dev", "test", "all"), help="which models to RUN (default dev)")
    ap.add_argument("--models", nargs="*", default=None, help="run only these models")
    ap.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, of {','.join(METHODS)}")
    ap.add_argument("--ks", default="10,50", help="comma-separated K for paper and pdfast (default 10,50)")
    ap.add_argument("--k1000-models", nargs="*", default=[], help="also K = 1000 (paper, pdfast) on these models")
    ap.add_argument("--n-samples", type=int, default=64, help="samples per trigger and per pattern (default 64)")
    ap.add_argument("--verdict-n", type=int, default=None,
                    help="how many of them are the verdict's (default: DetectionConfig n_eval, 16)")
    ap.add_argument("--smoke", action="store_true", help="tiny inversions, for testing this script only")
    ap.add_argument("--set", action="append", default=[], metavar="OPTION=VALUE",
                    help="an invert() option for every inversion (e.g. surrogate_steps=100); changes the cache key")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    ap.add_argument("--cache", type=Path, default=None, help="cache folder (default research/results/quality)")
    ap.add_argument("--out", type=Path, default=None,
                    help="write the cache and the three outputs under this folder instead of the repository")
    ap.add_argument("--dry-run", action="store_true", help="list what would run, with a CPU-time estimate")
    ap.add_argument("--report-only", action="store_true", help="only regenerate the outputs from the cache")
    ap.add_argument("--follow", action="store_true",
                    help="when done, wait for more models of the split to be built (recipe) and run them too")
    ap.add_argument("--follow-poll", type=float, default=300.0, help="seconds between zoo scans with --follow")
    ap.add_argument("--max-units", type=int, default=None, help="stop after this many units (testing)")
    return ap


class UsageError(Exception):
    """Options that cannot run (printed as one error line, exit status 2)."""


def parse_request(a) -> tuple[list[str], list[int], dict]:
    """(methods, ks, invert() overrides) from the options, after the checks that refuse a run."""
    if a.smoke and a.out is None and a.cache is None:
        raise UsageError("--smoke writes test numbers; give --out DIR so they stay out of the repository's results")
    if a.n_samples < 64 and not a.smoke:
        log(f"warning: --n-samples {a.n_samples} is below the 64 the evidence promises (ASR steps of 1/64)")
    if a.n_samples < 2:
        raise UsageError("--n-samples must be at least 2")
    methods = [x.strip() for x in a.methods.split(",") if x.strip()]
    bad = [x for x in methods if x not in METHODS]
    if bad:
        raise UsageError(f"unknown method {bad[0]}; use {','.join(METHODS)}")
    try:
        ks = sorted({int(x) for x in a.ks.split(",") if x.strip()})
    except ValueError:
        raise UsageError(f"--ks {a.ks}: comma-separated integers") from None
    overrides = {}
    for s in a.set:
        k, _, v = s.partition("=")
        try:
            overrides[k.strip()] = json.loads(v)
        except ValueError:
            overrides[k.strip()] = v
    return methods, ks, overrides


def main(argv=None) -> int:
    a = parser().parse_args(argv)
    command = "python research/quality " + " ".join(argv if argv is not None else sys.argv[1:])
    try:
        methods, ks, overrides = parse_request(a)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    import signal

    # `kill PID` ends a run like Ctrl-C: the held unit's lock is released (the handler is restored on return)
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        return _run(start(a, command, methods, ks, overrides))
    finally:
        signal.signal(signal.SIGTERM, previous)


@dataclass
class Run:
    """One invocation: its options and what they resolve to."""
    a: argparse.Namespace
    command: str
    methods: list[str]
    ks: list[int]
    settings: Settings
    cache: Path
    code: dict                      # code_version(): {"id", "eval_version", "modules"}
    env: dict
    git: dict
    outputs: tuple[Path, Path, Path]  # results.md, quality.json, the trigger sheet
    recipe: Path | None

    def plan(self, models: list[ZooModel]) -> list[Unit]:
        return plan(models, self.methods, self.ks, set(self.a.k1000_models), self.settings, self.cache,
                    self.code["id"])

    def done(self, u: Unit) -> bool:
        """Whether the unit has an entry of the current code version."""
        return entry_path(self.cache, u, self.code["id"]).is_file()


def start(a, command: str, methods: list[str], ks: list[int], overrides: dict) -> Run:
    """Threads, cache, code version (PDFAST_CACHE_DIR follows it), settings, environment and output paths."""
    import torch

    from pdfast.config import DetectionConfig
    from pdfast.envinfo import environment

    torch.set_num_threads(max(1, a.threads))
    cache = a.cache or (a.out / "quality" if a.out else CACHE)
    outputs = (a.out / "results.md", a.out / "quality.json", a.out / "quality-triggers.png") if a.out else \
        (REPORT_MD, REPORT_JSON, SHEET)
    recipe = a.recipe or (RECIPE if a.zoo.resolve() == ZOO.resolve() else None)
    dcfg = DetectionConfig()
    settings = Settings(n=a.n_samples, verdict_n=a.verdict_n or dcfg.n_eval, verdict_seed=dcfg.eval_seed,
                        asr_threshold=0.1, smoke=a.smoke, overrides=overrides)
    cache.mkdir(parents=True, exist_ok=True)
    code = code_version(cache)
    os.environ["PDFAST_CACHE_DIR"] = str(pdfast_cache(cache, code["id"]))
    env = environment()
    env.pop("kernels", None)
    log(f"code version {code['id']}, settings {settings.id()}, cache {cache}, {env.get('device')}, "
        f"{torch.get_num_threads()} thread(s)")
    return Run(a, command, methods, ks, settings, cache, code, env, git_info(), outputs, recipe)


def _run(run: Run) -> int:
    a = run.a
    all_models = scan_zoo(a.zoo, run.recipe)
    if a.report_only:
        write_outputs(run, all_models)
        log("wrote " + ", ".join(map(str, run.outputs)))
        return 0
    done_units = 0
    t_start = time.time()
    while True:
        models = selected(run, all_models)
        units = run.plan(models)
        todo = [u for u in units if not run.done(u)]
        if a.dry_run:
            return dry_run(units, todo, run.settings, run.cache, run.code["id"])
        log(f"{len(models)} models ({a.split}), {len(units)} units, {len(todo)} to run")
        done_units = run_units(run, todo, all_models, done_units)
        if (a.max_units is not None and done_units >= a.max_units) or not a.follow:
            break
        waiting = _waiting_for(run.recipe, all_models, a)
        if not waiting or time.time() - t_start > FOLLOW_HOURS * 3600:
            break
        log(f"waiting for {len(waiting)} models to be built ({', '.join(waiting[:4])}...); next scan in "
            f"{a.follow_poll:.0f} s")
        time.sleep(a.follow_poll)
        all_models = scan_zoo(a.zoo, run.recipe)
    write_outputs(run, all_models)
    log(f"{done_units} units run; wrote " + ", ".join(map(str, run.outputs)))
    return 0


def selected(run: Run, all_models: list[ZooModel]) -> list[ZooModel]:
    """The models to run: the split's (or all), narrowed to --models (any split's with --split all)."""
    a = run.a
    ms = [m for m in all_models if a.split == "all" or m.split == a.split]
    if a.models:
        unknown = set(a.models) - {m.name for m in all_models}
        if unknown:
            log(f"not built (yet): {', '.join(sorted(unknown))}")
        ms = [m for m in ms if m.name in a.models] if a.split != "all" else \
            [m for m in all_models if m.name in a.models]
    return ms


def run_units(run: Run, todo: list[Unit], all_models: list[ZooModel], done: int) -> int:
    """Each unit of ``todo`` not finished meanwhile and not held by another worker, up to --max-units; the outputs
    are regenerated after every finished unit. Returns the count of finished units (``done`` plus this call's)."""
    ctxs: dict[str, ModelCtx] = {}
    for u in todo:
        if run.a.max_units is not None and done >= run.a.max_units:
            break
        if run.done(u):
            continue
        lock = take_lock(run.cache, u)
        if lock is None:
            log(f"skip {u.model.name} {u.label}: another run holds it")
            continue
        try:
            finished = run_one(run, u, ctxs)
        finally:
            lock.unlink(missing_ok=True)
        if finished:
            done += 1
            write_outputs(run, all_models)
    return done


def run_one(run: Run, u: Unit, ctxs: dict[str, ModelCtx]) -> bool:
    """Measure one unit, its model loaded once (``ctxs``). A PdfastError (e.g. a diverged inversion) is a result,
    recorded as such; any other error is logged and the unit left for the next run. Returns whether it finished."""
    if u.model.name not in ctxs:
        ctxs.clear()  # one model in memory at a time (the units are ordered by method first)
        ctxs[u.model.name] = ModelCtx(u.model)
    log(f"run {u.model.name} {u.label} ...")
    t0 = time.perf_counter()
    try:
        rec = run_unit(u, ctxs[u.model.name], run.settings, run.cache, run.code["id"], run.env)
    except PdfastError as err:
        rec = error_entry(u, run.settings, run.cache, run.code["id"], run.env, str(err))
        log(f"failed {u.model.name} {u.label}: {err} (recorded)")
    except Exception:  # noqa: BLE001 - a bug or out of memory on one unit: keep going, do not cache
        import traceback

        log(f"error in {u.model.name} {u.label} (not recorded, retried next run):\n" + traceback.format_exc())
        return False
    asr = rec["samples"]["all"].get("asr") if "error" not in rec else None
    log(f"done {u.model.name} {u.label} in {time.perf_counter() - t0:.0f} s: ASR "
        f"{stats.fmt_rate(asr) if asr else '-'}, pattern unif "
        f"{f4(rec['pattern_samples']['all'].get('uniformity'))}, pattern cos "
        f"{f4(rec['trigger'].get('pattern_cos'), 3)}")
    return True


def coverage(run: Run, all_models: list[ZooModel]) -> dict:
    """Per split: planned units, done with the current code, and shown from an older version instead."""
    full = run.plan(all_models)
    shown = {(e["model"], e["method"], e["k"]): e["stale"]
             for e in collect(run.cache, all_models, run.settings, run.code["id"])}
    out = {}
    for m in all_models:
        c = out.setdefault(m.split, {"models": 0, "done": 0, "planned": 0, "stale": 0})
        c["models"] += 1
    for u in full:
        c = out[u.model.split]
        c["planned"] += 1
        cur = run.done(u)
        c["done"] += cur
        c["stale"] += (not cur) and shown.get((u.model.name, u.method, u.k)) is True
    return out


def write_outputs(run: Run, all_models: list[ZooModel]) -> None:
    """research/results/zoo-v1-report.md (or --out's results.md), quality.json and the trigger sheet, from the cache."""
    build_report(run.cache, all_models, run.settings, run.code, run.env, run.git, run.command,
                 coverage(run, all_models), *run.outputs)


def _waiting_for(recipe: Path | None, built: list[ZooModel], a) -> list[str]:
    """Recipe models of the selected split (and --models) that are not built yet; none without a recipe."""
    if recipe is None or not recipe.is_file():
        return []
    have = {m.name for m in built}
    want = [m["name"] for m in json.loads(recipe.read_text()).get("models", [])
            if (a.split == "all" or m.get("split") == a.split) and (not a.models or m["name"] in a.models)]
    return [n for n in want if n not in have]
