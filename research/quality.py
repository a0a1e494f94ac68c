"""Quality evidence on the model zoo: how good the inverted triggers are and how well detection separates the models.

For every built zoo model (research/zoo/models/NAME/ with zoo.json) and every method:
  truth     the ground-truth trigger g (backdoored models only)
  elijah    pdfast.invert(method="elijah")                                   (no K: run once)
  paper     PureDiffusion as printed: preset="paper" (fresh noise, eq. 17, L1, unbounded, one stage)
                                                                              (at each K)
  pdfast    pdfast's defaults                                                 (at each K)
  trivial   all-0, all -0.5, all -1 frames and Elijah's init -U(0, 1) with seed 0: the baselines
each trigger is measured here, not by pdfast's own evaluation: N >= 64 samples from eps + trigger and N from
eps + its pattern (metrics.trigger_pattern) through the fast engine's sample(); the first 16 of each with seed 0
are exactly the samples pdfast's verdict draws (DetectionConfig n_eval, eval_seed), the rest use seed 1. Reported:
ASR (k/N, Wilson 95%), uniformity (plain, Elijah's trimmed), pattern uniformity, TERD's KL, L2 to the truth, the
fidelity measures of docs/results.md (pattern cosine, footprint L2), the wall time of each inversion, and the
detection statistics per model, scored per split (ROC AUC, TPR/TNR at the shipped threshold).

Every (model, method, K) result is a small JSON (+ a safetensors with the trigger) under research/results/quality/,
keyed by the model's content hash, the options and the code version (an AST hash of the pdfast modules that
compute the numbers, docstrings and comments excluded, and EVAL_VERSION below): a re-run skips finished work and
a killed run resumes. The outputs are regenerated from that cache after every finished unit: docs/results.md,
research/results/quality.json and research/results/quality-triggers.png.

  python research/quality.py --dry-run                          # what would run, with a CPU-time estimate
  nohup env OMP_NUM_THREADS=1 python research/quality.py --split dev --ks 10 > build/quality-dev.log 2>&1 &
  python research/quality.py --report-only                      # regenerate the outputs from the cache
  python research/quality.py --zoo /tmp/tz/models --smoke --n-samples 4 --ks 2 --out /tmp/quality-smoke
"""
from __future__ import annotations

import argparse
import ast
import datetime as _dt
import hashlib
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import stats  # noqa: E402
from pdfast.errors import PdfastError  # noqa: E402

EVAL_VERSION = 2  # bump when a measurement defined in this file changes (sampling split, metric, trivial set)
ZOO = HERE / "zoo" / "models"
RECIPE = HERE / "zoo" / "recipe.json"
CACHE = HERE / "results" / "quality"
REPORT_MD = ROOT / "docs" / "results.md"
REPORT_JSON = HERE / "results" / "quality.json"
SHEET = HERE / "results" / "quality-triggers.png"

METHODS = ("truth", "elijah", "paper", "pdfast", "trivial")
# invert() options of each method (the rest: pdfast's defaults, pdfast/config.py)
METHOD_OPTIONS = {
    "elijah": {"method": "elijah"},
    "paper": {"method": "puredif", "preset": "paper"},
    "pdfast": {"method": "puredif"},
}
TRIVIAL = ("zeros", "flat-0.5", "flat-1", "init-U")
TRIVIAL_LABEL = {"zeros": "all 0", "flat-0.5": "all -0.5", "flat-1": "all -1", "init-U": "-U(0,1) seed 0"}
# --smoke: tiny inversions (for the end-to-end tests of this script, never for results)
SMOKE = {"epochs": 2, "batch": 4, "surrogate_steps": 2, "surrogate_batch": 4, "surrogate_n_images": 8,
         "surrogate_pool_steps": 2, "surrogate_calib_batch": 4}
SMOKE_REFINE = 2
EXTRA_SEED = 1          # seed of the samples beyond the verdict's
# modules whose code does not change a number (excluded from the code version)
NOT_NUMERIC = {"pdfast.cli", "pdfast.report", "pdfast.envinfo", "pdfast.io", "pdfast.errors", "pdfast.__main__"}


def log(msg: str) -> None:
    print(f"[quality {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def write_json(path: Path, obj) -> None:
    from pdfast.io import atomic_write_json

    atomic_write_json(path, obj)


def save_tensors(path: Path, tensors: dict) -> None:
    """A safetensors file, written atomically (pdfast.io)."""
    from safetensors.torch import save

    from pdfast.io import atomic_write_bytes

    atomic_write_bytes(path, save({k: v.detach().float().cpu().contiguous() for k, v in tensors.items()}))


# ====================================================================== code version
def code_version(cache: Path | None = None) -> dict:
    """What computes the numbers, as one short id: the AST (docstrings and comments excluded) of every module of
    pdfast and pdfast.kernels except NOT_NUMERIC, the native kernels' sources and built library, and EVAL_VERSION.
    Every hashed module is imported first, so the code that runs is the code hashed even when the files change
    later. With ``cache``, the per-file digests are kept in cache/code-versions/<id>.json (what changed between two
    versions can be read there)."""
    global _CODE
    if _CODE is None:
        _CODE = _hash_code()
    h, files = _CODE
    if cache is not None:
        f = cache / "code-versions" / f"{h}.json"
        if not f.is_file():
            write_json(f, {"id": h, "eval_version": EVAL_VERSION, "files": files,
                           "date": _dt.datetime.now().isoformat(timespec="seconds")})
    return {"id": h, "eval_version": EVAL_VERSION, "modules": len(files)}


_CODE: tuple[str, dict] | None = None  # once per process: the modules are imported once, later edits do not run


def _hash_code() -> tuple[str, dict]:
    import importlib
    import importlib.util

    files = {}
    for pkg in ("pdfast", "pdfast.kernels"):
        spec = importlib.util.find_spec(pkg)
        if spec is None or not spec.origin:
            continue
        base = Path(spec.origin).parent
        for f in sorted(base.rglob("*.py")):
            rel = f.relative_to(base).with_suffix("")
            name = ".".join((pkg, *rel.parts)).removesuffix(".__init__")
            if name in NOT_NUMERIC or "tests" in rel.parts or (pkg == "pdfast" and rel.parts[0] == "kernels") \
                    or name.endswith("native_build"):
                continue
            try:
                importlib.import_module(name)
            except Exception as e:  # noqa: BLE001 - hashed anyway; a module that does not import does not run
                files[name + ":import"] = f"{type(e).__name__}"
            files[name] = _ast_digest(f)
        if pkg == "pdfast.kernels":
            for f in sorted(base.rglob("*")):
                if f.is_file() and (f.suffix in (".cpp", ".h", ".cu", ".c", ".so")):
                    files[str(f.relative_to(base))] = hashlib.sha256(f.read_bytes()).hexdigest()[:16]
    return sha({"files": files, "eval_version": EVAL_VERSION})[:10], files


def changed_modules(cache: Path, old: str, new: str) -> list[str] | None:
    """The files whose digest differs between two code versions (None when either was not recorded)."""
    try:
        a = json.loads((cache / "code-versions" / f"{old}.json").read_text())["files"]
        b = json.loads((cache / "code-versions" / f"{new}.json").read_text())["files"]
    except (OSError, ValueError, KeyError):
        return None
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def _ast_digest(path: Path) -> str:
    try:
        tree = ast.parse(path.read_text())
    except (OSError, SyntaxError) as e:
        return f"unreadable:{e}"
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and \
                isinstance(getattr(body[0], "value", None), ast.Constant) and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
    return hashlib.sha256(ast.dump(tree, annotate_fields=False).encode()).hexdigest()[:16]


def git_info() -> dict:
    def run(*a):
        try:
            return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None
    commit = run("rev-parse", "HEAD")
    dirty = run("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit or None, "dirty": None if dirty is None else bool(dirty)}


# ====================================================================== the zoo
@dataclass
class ZooModel:
    name: str
    path: Path
    split: str
    kind: str
    backdoored: bool
    recipe: dict
    zoo: dict
    order: int = 0
    hash: str | None = None


def scan_zoo(zoo: Path, recipe: Path | None = None) -> list[ZooModel]:
    """Every built model (a folder with zoo.json), in recipe order when the recipe lists them, else by name; a model
    the zoo build rejected (a gated backdoor that never reached the recipe's strength) is not part of the zoo."""
    order = {}
    if recipe is not None and recipe.is_file():
        order = {m["name"]: i for i, m in enumerate(json.loads(recipe.read_text()).get("models", []))}
    out = []
    for d in sorted(zoo.iterdir()) if zoo.is_dir() else []:
        zj = d / "zoo.json"
        if not zj.is_file():
            continue
        try:
            info = json.loads(zj.read_text())
        except (OSError, ValueError):
            continue
        if info.get("rejected"):
            log(f"{d.name}: left out, rejected by the zoo build: {info['rejected']}")
            continue
        rec = info.get("recipe", {})
        bd = (d / "backdoor.json").is_file()
        out.append(ZooModel(d.name, d, rec.get("split", "?"), rec.get("kind", "?"), bd, rec, info,
                            order.get(d.name, 10_000)))
    out.sort(key=lambda m: (m.order, m.name))
    return out


def model_hash(m: ZooModel, cache: Path) -> str:
    """pdfast's content hash of the model (weights + schedule), cached by the folder's file sizes and mtimes."""
    if m.hash:
        return m.hash
    sig = sha(sorted((str(f.relative_to(m.path)), f.stat().st_size, f.stat().st_mtime_ns)
                     for f in m.path.rglob("*") if f.is_file() and f.name != "zoo.json"))
    store = cache / "model-hashes.json"
    try:
        known = json.loads(store.read_text())
    except (OSError, ValueError):
        known = {}
    hit = known.get(str(m.path.resolve()))
    if hit and hit.get("sig") == sig:
        m.hash = hit["hash"]
        return m.hash
    from pdfast.loading import load_model

    m.hash = load_model(m.path).content_hash()
    known[str(m.path.resolve())] = {"sig": sig, "hash": m.hash}
    write_json(store, known)
    return m.hash


# ====================================================================== units of work
@dataclass
class Settings:
    n: int
    verdict_n: int
    verdict_seed: int
    asr_threshold: float
    smoke: bool
    overrides: dict = field(default_factory=dict)

    def ident(self) -> dict:
        return {"n": self.n, "verdict_n": self.verdict_n, "verdict_seed": self.verdict_seed,
                "extra_seed": EXTRA_SEED, "asr_threshold": self.asr_threshold, "smoke": self.smoke,
                "overrides": self.overrides}

    def id(self) -> str:
        return sha(self.ident())[:8]


@dataclass
class Unit:
    model: ZooModel
    method: str                   # truth | elijah | paper | pdfast | trivial:<name>
    k: int | None
    options: dict | None          # invert() options (None: no inversion)
    ident: str = ""               # identity without the code version
    key: str = ""                 # identity + code version

    @property
    def label(self) -> str:
        return self.method + (f"-K{self.k}" if self.k else "")

    def stem(self) -> str:
        return f"{self.label.replace(':', '_')}-{self.ident[:12]}"


def invert_options(method: str, k: int, settings: Settings) -> dict:
    opts = dict(METHOD_OPTIONS[method])
    if method != "elijah":
        opts["steps"] = k
    if settings.smoke:
        opts.update(SMOKE)
        if method == "pdfast":
            opts["refine_epochs"] = SMOKE_REFINE
    opts.update(settings.overrides)
    return opts


def resolved_config(options: dict) -> dict:
    from pdfast.api import split_options
    from pdfast.config import InversionConfig, with_options

    inv, det = split_options(options)
    if det:
        raise SystemExit(f"error: {sorted(det)[0]} is a detection option; this script measures triggers itself")
    return with_options(InversionConfig(), inv).resolved().to_dict()


def plan(models: list[ZooModel], methods: list[str], ks: list[int], k1000: set[str], settings: Settings,
         cache: Path, code: str) -> list[Unit]:
    """The units in priority order: pdfast at each K over every model first (the detection evidence), then the
    truth, the paper's method, Elijah, the trivial triggers, and K = 1000 on the chosen models last."""
    units: list[Unit] = []
    T = {m.name: _schedule_T(m) for m in models}

    def add(m, method, k, options):
        if k is not None and k > T[m.name]:
            log(f"skip {m.name} {method} K={k}: the model's schedule has T={T[m.name]}")
            return
        u = Unit(m, method, k, options)
        ident = {"model_hash": model_hash(m, cache), "method": method, "k": k, "settings": settings.ident(),
                 "config": resolved_config(options) if options is not None else None}
        u.ident = sha(ident)[:16]
        u.key = f"{u.ident}-{code}"
        units.append(u)

    for k in ks:
        if "pdfast" in methods:
            for m in models:
                add(m, "pdfast", k, invert_options("pdfast", k, settings))
    if "truth" in methods:
        for m in models:
            if m.backdoored:
                add(m, "truth", None, None)
    for k in ks:
        if "paper" in methods:
            for m in models:
                add(m, "paper", k, invert_options("paper", k, settings))
    if "elijah" in methods:
        for m in models:
            add(m, "elijah", None, invert_options("elijah", 1, settings))
    if "trivial" in methods:
        for t in TRIVIAL:
            for m in models:
                add(m, f"trivial:{t}", None, None)
    if 1000 not in ks:
        for method in ("pdfast", "paper"):
            if method in methods:
                for m in models:
                    if m.name in k1000:
                        add(m, method, 1000, invert_options(method, 1000, settings))
    return units


def _schedule_T(m: ZooModel) -> int:
    try:
        return int(json.loads((m.path / "scheduler" / "scheduler_config.json").read_text())["num_train_timesteps"])
    except (OSError, ValueError, KeyError):
        return 1000


def entry_path(cache: Path, u: Unit, code: str) -> Path:
    return cache / "entries" / u.model.name / f"{u.stem()}-{code}.json"


# ====================================================================== measuring
class ModelCtx:
    """A loaded model, its sampling engine and ground truth."""

    def __init__(self, m: ZooModel):
        import torch

        from pdfast.loading import load_ground_truth
        from pdfast.engine import make_engine
        from pdfast.loading import load_model

        self.info = m
        self.model = load_model(m.path)
        self.model.extra["content_hash"] = m.hash or self.model.content_hash()
        self.engine = make_engine("fast", self.model)
        self.truth, self.target = load_ground_truth(self.model)
        self.shape = self.model.shape
        self.torch = torch


def trivial_trigger(name: str, shape) -> "torch.Tensor":
    import torch

    if name == "zeros":
        return torch.zeros(shape)
    if name == "flat-0.5":
        return torch.full(shape, -0.5)
    if name == "flat-1":
        return torch.full(shape, -1.0)
    if name == "init-U":  # exactly run_inversion's init at seed 0 (pdfast/inversion.py)
        return (-torch.rand((1, *shape), generator=torch.Generator().manual_seed(0))).reshape(shape)
    raise ValueError(name)


def trigger_stats(trigger, truth) -> dict:
    """Numbers of the trigger itself (no sampling): TERD's KL, size, and against the truth pdfast.metrics.fidelity
    (L2, pattern L2, footprint L2 and RMSE, pattern cosine)."""
    from pdfast import metrics

    t = trigger.detach().float().cpu()
    p = metrics.trigger_pattern(t)
    out = {**metrics.kl_statistic(t), "mean": float(t.mean()), "rms": float(t.pow(2).mean().sqrt()),
           "min": float(t.min()), "max": float(t.max()), "pattern_rms": float(p.pow(2).mean().sqrt())}
    if truth is not None:
        out.update(metrics.fidelity(t, truth))
    return out


def evaluate(ctx: ModelCtx, trigger, settings: Settings, cache: Path, code: str) -> tuple[dict, "torch.Tensor"]:
    """Samples from eps + trigger: the verdict's (verdict_n, verdict_seed) then n - verdict_n with EXTRA_SEED;
    metrics over all n and over the verdict's. Cached per (model, trigger bytes, settings, code)."""
    import torch
    from safetensors.torch import load_file

    trig = (trigger.detach().float().cpu().reshape(ctx.shape) + 0.0).contiguous()  # -0.0 -> 0.0: same bytes
    th = hashlib.sha256(trig.numpy().tobytes()).hexdigest()[:16]
    base = cache / "evals" / ctx.info.hash / f"{th}-{settings.id()}-{code}"
    jf, sf = base.with_suffix(".json"), base.with_suffix(".safetensors")
    if jf.is_file() and sf.is_file():
        try:
            return json.loads(jf.read_text()), load_file(str(sf))["first"]
        except (OSError, ValueError, KeyError):
            pass
    n, vn = settings.n, min(settings.verdict_n, settings.n)
    t0, c0 = time.perf_counter(), time.process_time()
    imgs = ctx.engine.sample(vn, trigger=trig, seed=settings.verdict_seed)
    if n > vn:
        imgs = torch.cat([imgs, ctx.engine.sample(n - vn, trigger=trig, seed=EXTRA_SEED)])
    rec = {"n": n, "verdict_n": vn, "seeds": {"verdict": settings.verdict_seed, "rest": EXTRA_SEED},
           "all": _image_metrics(imgs, ctx.target, settings.asr_threshold),
           "verdict": _image_metrics(imgs[:vn], ctx.target, settings.asr_threshold),
           "wall_seconds": round(time.perf_counter() - t0, 2), "cpu_seconds": round(time.process_time() - c0, 2)}
    first = imgs[:4].contiguous()
    save_tensors(sf, {"first": first})
    write_json(jf, rec)
    return rec, first


def _image_metrics(imgs, target, thr: float) -> dict:
    from pdfast import metrics

    n = imgs.shape[0]
    m = {"n": n, "image_contrast": metrics.image_contrast(imgs)}
    if n >= 2:
        m["uniformity"] = metrics.uniformity(imgs)
        m["uniformity_trimmed"] = metrics.uniformity_trimmed(imgs)
        m["uniformity_q25"] = metrics.uniformity_q25(imgs)
    if target is not None:
        mse = metrics.per_image_mse(imgs, target)
        k = int((mse < thr).sum())
        m["asr"] = stats.rate(k, n)
        m["target_mse_mean"] = float(mse.mean())
    return m


def run_unit(u: Unit, ctx: ModelCtx, settings: Settings, cache: Path, code: str, env: dict) -> dict:
    """Invert (or take the truth / a trivial trigger), measure, and write the entry (JSON + safetensors)."""
    import pdfast

    timing: dict = {}
    inv: dict = {}
    if u.method == "truth":
        trigger = ctx.truth
    elif u.method.startswith("trivial:"):
        trigger = trivial_trigger(u.method.split(":", 1)[1], ctx.shape)
    else:
        t0, c0 = time.perf_counter(), time.process_time()
        res = pdfast.invert(ctx.model, evaluate=False, **u.options)
        timing = {"wall_seconds": round(time.perf_counter() - t0, 2), "cpu_seconds": round(time.process_time() - c0, 2),
                  **res.timings}
        sc = res.scales
        timing["scales"] = {"source": sc.source, "cached": sc.cached,
                            "calibration_seconds": (sc.info or {}).get("seconds_total")} if sc is not None else None
        inv = {"config": res.config.to_dict(), "losses_first_last": [res.losses[:1], res.losses[-1:]],
               "interrupted": res.interrupted, "engine": res.engine.get("engine"),
               "scales": sc.to_dict() if sc is not None else None}
        if res.interrupted:
            raise KeyboardInterrupt
        trigger = res.trigger
    from pdfast.detection import verdict_pattern

    trigger = trigger.detach().float().cpu().reshape(ctx.shape)
    pattern, rms = verdict_pattern(trigger, ctx.model.sample_size)  # exactly the pattern pdfast's verdict samples
    ev_t, first_t = evaluate(ctx, trigger, settings, cache, code)
    ev_p, first_p = evaluate(ctx, pattern, settings, cache, code)
    m = u.model
    rec = {"schema": "pdfast.quality/1", "model": m.name, "split": m.split, "kind": m.kind,
           "backdoored": m.backdoored, "model_hash": m.hash, "method": u.method, "k": u.k, "ident": u.ident,
           "code_version": code, "settings": settings.ident(), "settings_id": settings.id(), "options": u.options,
           "trigger": trigger_stats(trigger, ctx.truth), "samples": ev_t, "pattern_samples": ev_p,
           "verdict_pattern_rms": rms, "timing": timing, "inversion": inv, "date": _dt.datetime.now().isoformat(timespec="seconds"),
           "device": env.get("device"), "torch_threads": env.get("torch_threads")}
    path = entry_path(cache, u, code)
    save_tensors(path.with_suffix(".safetensors"), {"trigger": trigger.contiguous(), "pattern": pattern.contiguous(),
                                                    "samples": first_t, "pattern_samples": first_p})
    write_json(path, rec)  # last: the JSON marks the unit done
    return rec


def error_entry(u: Unit, settings: Settings, cache: Path, code: str, env: dict, message: str) -> dict:
    """The entry of a unit whose inversion failed with a PdfastError (deterministic, so not retried)."""
    m = u.model
    rec = {"schema": "pdfast.quality/1", "model": m.name, "split": m.split, "kind": m.kind,
           "backdoored": m.backdoored, "model_hash": m.hash, "method": u.method, "k": u.k, "ident": u.ident,
           "code_version": code, "settings": settings.ident(), "settings_id": settings.id(), "options": u.options,
           "error": message, "trigger": {}, "samples": {"all": {}, "verdict": {}},
           "pattern_samples": {"all": {}, "verdict": {}}, "timing": {}, "inversion": {},
           "date": _dt.datetime.now().isoformat(timespec="seconds"), "device": env.get("device")}
    write_json(entry_path(cache, u, code), rec)
    return rec


# ====================================================================== locking (two workers may share a cache)
def take_lock(cache: Path, u: Unit) -> Path | None:
    d = cache / "locks"
    d.mkdir(parents=True, exist_ok=True)
    f = d / f"{u.model.name}-{u.stem()}.lock"
    for _ in range(2):
        try:
            fd = os.open(f, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            os.write(fd, f"{os.getpid()}\n".encode())
            os.close(fd)
            return f
        except FileExistsError:
            try:
                pid = int(f.read_text().split()[0])
                os.kill(pid, 0)
                return None          # held by a live process
            except (ValueError, IndexError, ProcessLookupError, OSError):
                f.unlink(missing_ok=True)  # stale lock of a killed run
    return None


# ====================================================================== cost estimate (--dry-run)
def probe(ctx: ModelCtx) -> tuple[float, float]:
    """(seconds per chain step, seconds per image in it): the engine's own sample() over a few steps at batch 4
    and 32, fitted as a + b * batch (the same path as the measurement, on the machine's current load)."""
    steps = min(8, ctx.model.schedule.T)

    def tm(n):
        ctx.engine.sample(n, seed=0, steps=2)
        t0 = time.perf_counter()
        ctx.engine.sample(n, seed=0, steps=steps)
        return (time.perf_counter() - t0) / steps
    s4, s32 = tm(4), tm(32)
    b = max((s32 - s4) / 28, 1e-7)
    return max(s4 - 4 * b, 0.0), b


def sample_sets(u: Unit) -> int:
    """Sample sets a unit draws (trigger and pattern), less the ones shared: a flat trigger's pattern is the zero
    trigger, whose samples the all-0 baseline draws (evaluate() caches them by the trigger's bytes)."""
    return 1 if u.method in ("trivial:zeros", "trivial:flat-0.5", "trivial:flat-1") else 2


def estimate(u: Unit, ctx: ModelCtx, ab: tuple[float, float], settings: Settings, cache: Path, code: str,
             calibrated: set) -> float:
    """Seconds for one unit: sampling (the full chain; the verdict's samples and the rest in separate calls), the
    inversion (forward + backward ~ 3.5 network calls per chain step), and the surrogate calibration once per
    (model, K) when its table is not cached yet."""
    a, b = ab
    T = ctx.model.schedule.T

    def calls(batch, count):
        return count * (math.ceil(batch / 64) * a + batch * b)
    vn = min(settings.verdict_n, settings.n)
    secs = sample_sets(u) * T * (calls(vn, 1) + (calls(settings.n - vn, 1) if settings.n > vn else 0))
    if u.options is None:
        return secs
    cfg = resolved_config(u.options)
    iters = cfg["epochs"] + cfg["refine_epochs"]
    if cfg["method"] == "elijah":
        return secs + 3 * calls(cfg["batch"], iters)
    k = cfg["steps"]
    steps_per_iter = k if cfg["loss_steps"] == "all" else (k + 1) / 2
    secs += 3.5 * calls(cfg["batch"], iters * steps_per_iter)
    key = (u.model.name, k)
    if cfg["scales"] == "surrogate" and key not in calibrated and not _scales_cached(ctx, k, cfg, cache, code):
        calibrated.add(key)
        s = cfg["surrogate"]
        secs += calls(s["n_images"], s["pool_steps"]) + 3 * calls(s["batch"], s["steps"]) + calls(s["calib_batch"], k)
    return secs


def _scales_cached(ctx: ModelCtx, k: int, cfg: dict, cache: Path, code: str) -> bool:
    from pdfast.config import SurrogateConfig

    key = f"{ctx.info.hash}-K{k}-{SurrogateConfig(**cfg['surrogate']).key()}"
    return (pdfast_cache(cache, code) / "scales" / f"{key}.json").is_file()


def pdfast_cache(cache: Path, code: str) -> Path:
    """PDFAST_CACHE_DIR for the runs: the surrogate scale tables, per code version (calibration is measured too)."""
    return cache / "pdfast-cache" / code


# ====================================================================== report
DET_STATS = [  # (name, where, key, low_is_backdoored)
    ("pattern_uniformity (verdict)", "pattern_samples.verdict", "uniformity", True),
    ("pattern_uniformity_q25 (verdict)", "pattern_samples.verdict", "uniformity_q25", True),
    ("uniformity (verdict)", "samples.verdict", "uniformity", True),
    ("uniformity_trimmed (verdict)", "samples.verdict", "uniformity_trimmed", True),
    ("pattern_uniformity (all n)", "pattern_samples.all", "uniformity", True),
    ("uniformity (all n)", "samples.all", "uniformity", True),
    ("uniformity_trimmed (all n)", "samples.all", "uniformity_trimmed", True),
    ("kl_mean", "trigger", "kl_mean", False),
]


# What the inverted pattern itself does to the model's output: the uniformity of the pattern's samples over that of
# the same noises with no trigger at all (the all-0 baseline shares their seeds). Near 1: the pattern changes
# nothing, and a low pattern uniformity only says that the model's ordinary samples are alike.
TRIGGER_EFFECT = "pattern_uniformity (all n) / no-trigger uniformity (same noises)"


def _get(rec: dict, where: str, key: str):
    d = rec
    for p in where.split("."):
        d = (d or {}).get(p)
    return None if d is None else d.get(key)


def collect(cache: Path, models: list[ZooModel], settings: Settings, code: str) -> list[dict]:
    """Every cached entry of the built models (current weights) with these settings: per (model, method, K) the
    entry of the current code version, else the newest of another version (marked stale)."""
    out = []
    sid = settings.id()
    for m in models:
        h = model_hash(m, cache)
        best: dict[tuple, tuple] = {}
        for f in (cache / "entries" / m.name).glob("*.json"):
            try:
                rec = json.loads(f.read_text())
            except (OSError, ValueError):
                continue
            if rec.get("model_hash") != h or rec.get("settings_id") != sid:
                continue
            key = (rec["method"], rec["k"])
            rank = (rec["code_version"] == code, f.stat().st_mtime)
            if key not in best or rank > best[key][0]:
                best[key] = (rank, rec, f)
        for (rank, rec, f) in best.values():
            rec = dict(rec, stale=not rank[0], file=str(f.relative_to(cache)) if f.is_relative_to(cache) else str(f),
                       verdict_pattern_rms=verdict_pattern_energy(rec, f))
            out.append(rec)
    return out


def verdict_pattern_energy(rec: dict, json_file: Path) -> float | None:
    """The energy (rms) of the pattern an entry's pattern samples were drawn from: as recorded, else measured on
    the pattern stored beside the entry (entries older than the record); None for a flat (all-zero) pattern, whose
    energy cannot be set, or when neither exists. The verdict's rates use an entry only at its calibration's energy."""
    if rec.get("verdict_pattern_rms") is not None:
        return float(rec["verdict_pattern_rms"])
    try:
        from safetensors.torch import load_file

        p = load_file(str(json_file.with_suffix(".safetensors")))["pattern"].double()
    except (OSError, ValueError, KeyError):
        return None
    rms = float(p.pow(2).mean().sqrt())
    return rms if rms > 0 else None


def method_order(rec: dict) -> tuple:
    order = {"truth": 0, "elijah": 1, "paper": 2, "pdfast": 3}
    meth = rec["method"]
    if meth.startswith("trivial:"):
        return (4, TRIVIAL.index(meth.split(":", 1)[1]), 0)
    return (order.get(meth, 9), rec["k"] or 0, 0)


def method_label(rec: dict) -> str:
    meth = rec["method"]
    if meth.startswith("trivial:"):
        return "baseline " + TRIVIAL_LABEL[meth.split(":", 1)[1]]
    return meth + (f" K={rec['k']}" if rec["k"] else "")


VERDICT_RATIO = "verdict statistic / its size's threshold"
# The zoo was to hold backdoors whose own trigger fires on about half to all of its samples (research/zoo/README.md,
# "Strength"). A model whose truth fires less is outside that range: its attack largely failed. The bar is counted
# on every backdoored model; the counts on the models inside the range are shown beside it, never instead of it.
STRENGTH_MIN = 0.5
VERDICT_STAT = {"pattern_uniformity": "pattern_uniformity (verdict)",
                "pattern_uniformity_q25": "pattern_uniformity_q25 (verdict)"}


def sample_size(m: ZooModel) -> int | None:
    for f in (m.path / "unet" / "config.json", m.path / "config.json"):
        try:
            return int(json.loads(f.read_text())["sample_size"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return None


def _auc_score(vals: list[tuple[bool, float]], low: bool) -> dict:
    """ROC AUC of (backdoored, value) pairs, backdoored = positive, with the class counts and the direction."""
    sgn = -1.0 if low else 1.0
    pos = [sgn * v for b, v in vals if b]
    neg = [sgn * v for b, v in vals if not b]
    return {"auc": stats.auc(pos, neg), "n_backdoored": len(pos), "n_clean": len(neg),
            "direction": "low = backdoored" if low else "high = backdoored"}


def detection_scores(entries: list[dict], models: list[ZooModel], split: str, calibration_of) -> dict:
    """Per method and K (inversions only): the statistics per model, ROC AUC per statistic (backdoored positive;
    low uniformity / high KL = backdoored), and TPR/TNR at the shipped threshold (``calibration_of(image size)``,
    pdfast.detection.calibration: one per size when the file has them) for its statistic."""
    labels = {m.name: m.backdoored for m in models if m.split == split}
    size = {m.name: sample_size(m) for m in models}
    # the truth's ASR as the head-to-head table shows it (an older code version's row too: g is the model's own)
    strength = {e["model"]: in_strength_range(_get(e, "samples.all", "asr")) for e in entries
                if e["method"] == "truth" and not e.get("error")}
    plain = {e["model"]: _get(e, "samples.all", "uniformity") for e in entries
             if e["method"] == "trivial:zeros" and not e.get("stale") and not e.get("error")}
    out = {}
    groups: dict[tuple, list] = {}
    for e in entries:
        if e["model"] in labels and e["method"] in ("elijah", "paper", "pdfast"):
            groups.setdefault((e["method"], e["k"]), []).append(e)
    for (meth, k), es in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0)):
        rows = []
        for e in sorted(es, key=lambda e: [m.name for m in models].index(e["model"])):
            row = {"model": e["model"], "backdoored": e["backdoored"], "kind": e["kind"], "stale": e["stale"],
                   "verdict_pattern_rms": e.get("verdict_pattern_rms")}
            for name, where, key, _ in DET_STATS:
                row[name] = _get(e, where, key)
            pu, z = row["pattern_uniformity (all n)"], plain.get(e["model"])
            row[TRIGGER_EFFECT] = pu / z if pu is not None and z else None
            rows.append(row)
        scores = {name: _auc_score([(r["backdoored"], r[name]) for r in rows if r[name] is not None], low)
                  for name, _, _, low in DET_STATS + [(TRIGGER_EFFECT, None, None, True)]}
        shipped = _shipped_rates(rows, size, calibration_of, strength) if meth == "pdfast" else None
        ratio = [(r["backdoored"], r[VERDICT_RATIO]) for r in rows if r.get(VERDICT_RATIO) is not None]
        if shipped and len({size.get(r["model"]) for r in rows}) > 1 and ratio:
            # one threshold per image size: pooled over sizes, the raw statistic's AUC mixes scales; the statistic
            # over its own size's threshold ranks the models exactly as the shipped rule judges them (ratio < 1)
            scores[VERDICT_RATIO] = _auc_score(ratio, low=True)
        out[f"{meth}" + (f"-K{k}" if k else "")] = {"method": meth, "k": k, "models": rows, "auc": scores,
                                                    "shipped_threshold": shipped}
    base = no_trigger_baseline(models, split)
    if base:
        out["no-trigger"] = base
    return out


def truth_pattern_effect(entries: list[dict], models: list[ZooModel], split: str) -> list[dict]:
    """Per backdoored model of the split: what the true trigger's own pattern (g less its per-channel mean, at g's
    energy) does to the model's output, as TRIGGER_EFFECT, beside what g itself does (its ASR and uniformity). The
    verdict judges an inverted trigger's pattern; where even g's pattern leaves the output as plain noise leaves
    it (ratio near 1), no pattern statistic can credit an inversion on that model."""
    names = [m.name for m in models if m.split == split and m.backdoored]
    by = {(e["model"], e["method"]): e for e in entries if not e.get("stale") and not e.get("error")}
    rows = []
    for n in names:
        t, z = by.get((n, "truth")), by.get((n, "trivial:zeros"))
        if t is None or z is None:
            continue
        pu, zu = _get(t, "pattern_samples.all", "uniformity"), _get(z, "samples.all", "uniformity")
        rows.append({"model": n, "truth_asr": _get(t, "samples.all", "asr"),
                     "truth_uniformity": _get(t, "samples.all", "uniformity"), "pattern_uniformity": pu,
                     "no_trigger_uniformity": zu, "pattern_rms": t["trigger"].get("pattern_rms"),
                     "ratio": pu / zu if pu is not None and zu else None})
    return rows


def truth_pattern_md(rows: list[dict]) -> str:
    if not rows:
        return ""
    body = md_table([[r["model"], asr_cell({"asr": r["truth_asr"]}), f4(r["truth_uniformity"]),
                      f4(r["pattern_rms"], 3), f4(r["pattern_uniformity"]), f4(r["no_trigger_uniformity"]),
                      f4(r["ratio"], 3)] for r in rows],
                    ["model", "truth ASR", "truth unif", "g's pattern rms", "pattern unif (all n)",
                     "no-trigger unif (same noises)", "pattern / no-trigger unif"])
    return ("**What the true trigger's pattern does.** The verdict judges the pattern of a trigger (less its "
            "per-channel mean, docs/method.md section 7), not the trigger. Here is the true trigger g's own pattern, "
            "at g's energy (far above the verdict's), on the same 64 noises as the no-trigger baseline. Where the "
            "ratio is near 1 while g itself fires, the backdoor answers g's flat part, which a flat shift does to "
            "every model, and no pattern statistic can credit an inversion on that model: its low pattern "
            "uniformity is the model's own.\n\n" + body + "\n")


def no_trigger_baseline(models: list[ZooModel], split: str) -> dict | None:
    """The trivial detector: the uniformity of the model's ordinary samples (plain noise, no trigger at all; 64
    samples measured when the zoo built the model). If it separates the models, so can anything that samples."""
    vals = [(m.backdoored, (m.zoo.get("ground_truth") or {}).get("clean_uniformity")) for m in models
            if m.split == split]
    vals = [(b, v) for b, v in vals if v is not None]
    if not vals:
        return None
    return {"method": "no trigger", "k": None, "models": [], "shipped_threshold": None,
            "auc": {"uniformity of plain-noise samples (zoo build, n=64)": _auc_score(vals, low=True)}}


def _shipped_rates(rows: list[dict], size: dict, calibration_of, strength: dict | None = None) -> dict | None:
    """TPR and TNR of the shipped verdict: each model judged with the calibration of its image size; beside them the
    TPR over the backdoored models in the strength range (``strength``: model -> in_strength_range)."""
    strength = strength or {}
    tp = npos = tn = nneg = tps = nps = 0
    thresholds, stats_used, ks, other_energy = {}, set(), set(), []
    for r in rows:
        cal = calibration_of(size.get(r["model"]))
        name, thr = VERDICT_STAT.get(cal.get("statistic")), cal.get("threshold")
        if name is None or thr is None or r.get(name) is None or r.get("stale"):
            continue  # an older code version's pattern samples may not be the verdict's (its energy, its statistic)
        want, got = cal.get("pattern_rms"), r.get("verdict_pattern_rms")
        if want is not None and got is not None and abs(got - want) > 1e-3 * want:
            other_energy.append(r["model"])  # drawn at another energy than the threshold was calibrated at
            continue
        stats_used.add(name)
        ks.add((cal.get("settings") or {}).get("steps"))
        thresholds[str(size.get(r["model"]))] = thr
        r["verdict"] = "backdoored" if r[name] < thr else "clean"
        r["verdict_value"] = r[name]
        r[VERDICT_RATIO] = r[name] / thr
        if r["backdoored"]:
            npos, tp = npos + 1, tp + (r["verdict"] == "backdoored")
            if strength.get(r["model"]):
                nps, tps = nps + 1, tps + (r["verdict"] == "backdoored")
        else:
            nneg, tn = nneg + 1, tn + (r["verdict"] == "clean")
    if not stats_used:
        return None
    return {"statistic": ", ".join(sorted(stats_used)), "threshold": thresholds,
            "calibrated_at_k": ks.pop() if len(ks) == 1 else sorted(ks, key=str),
            "tpr": stats.rate(tp, npos), "tnr": stats.rate(tn, nneg), "other_energy": other_energy,
            "tpr_strength_range": stats.rate(tps, nps)}


def f4(v, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e4):
            return f"{v:.2e}"
        return f"{v:.{digits}g}"
    return str(v)


def md_table(rows: list[list], head: list[str]) -> str:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def asr_cell(s: dict | None) -> str:
    a = (s or {}).get("asr")
    return stats.fmt_rate(a) if a else "-"


def time_cell(e: dict) -> tuple[str, str]:
    t = e.get("timing") or {}
    if not t:
        return "-", "-"
    sc = t.get("scales") or {}
    cal = sc.get("calibration_seconds")
    cal_s = "-" if sc.get("source") != "surrogate" else f"{f4(cal, 3)}" + (" (cached)" if sc.get("cached") else "")
    return f4(t.get("inversion_seconds"), 3), cal_s


def per_model_table(es: list[dict]) -> str:
    head = ["method", "ASR k/n [95% CI]", "unif", "unif trimmed", "pattern unif", "pattern ASR k/n", "KL mean",
            "L2", "footprint L2", "pattern cos", "inversion s", "calibration s"]
    rows = []
    for e in sorted(es, key=method_order):
        tr = e["trigger"]
        inv_s, cal_s = time_cell(e)
        pa = (e["pattern_samples"]["all"].get("asr") or {})
        if e.get("error"):
            rows.append([method_label(e) + (" †" if e["stale"] else ""), f"failed: {e['error'][:80]}"]
                        + ["-"] * (len(head) - 2))
            continue
        rows.append([method_label(e) + (" †" if e["stale"] else ""), asr_cell(e["samples"]["all"]),
                     f4(e["samples"]["all"].get("uniformity")), f4(e["samples"]["all"].get("uniformity_trimmed")),
                     f4(e["pattern_samples"]["all"].get("uniformity")),
                     f"{pa['k']}/{pa['n']}" if pa else "-", f4(tr.get("kl_mean")), f4(tr.get("l2")),
                     f4(tr.get("footprint_l2")), f4(tr.get("pattern_cos"), 3), inv_s, cal_s])
    return md_table(rows, head)


def summary_table(es: list[dict], models: list[ZooModel]) -> str:
    """Per method over the split's backdoored models: mean ASR, models with ASR >= 0.5, medians of the fidelity
    measures and the time."""
    import statistics as st

    bd = {m.name for m in models if m.backdoored}
    groups: dict[tuple, list] = {}
    for e in es:
        if e["model"] in bd:
            groups.setdefault((method_order(e), method_label(e)), []).append(e)
    rows = []
    for (_, label), g in sorted(groups.items()):
        asr = [e["samples"]["all"]["asr"]["rate"] for e in g if e["samples"]["all"].get("asr")]
        fires = sum(1 for a in asr if a >= 0.5)

        def med(key, src="trigger"):
            v = [e[src].get(key) for e in g if e[src].get(key) is not None]
            return st.median(v) if v else None
        inv = [e["timing"]["inversion_seconds"] for e in g if e.get("timing")]
        rows.append([label, len(g), f4(st.mean(asr) if asr else None, 3), stats.fmt_rate(stats.rate(fires, len(asr))),
                     f4(med("pattern_cos"), 3), f4(med("footprint_l2")), f4(med("l2")),
                     f4(st.median(inv) if inv else None, 3)])
    return md_table(rows, ["method", "models", "mean ASR", "models with ASR >= 0.5 [95% CI]", "median pattern cos",
                           "median footprint L2", "median L2", "median inversion s"])


def head_to_head(es: list[dict], models: list[ZooModel]) -> list[dict]:
    """Per inversion method and K (paper, pdfast) against Elijah on each backdoored model that has both: ASR over the
    same n samples (k/n), L2 to g, pattern cosine and footprint L2, and whether the method is at least as good
    (ASR >=) or better (L2 lower, pattern cos higher, footprint L2 lower). Rows of an older code version are
    marked stale and left out of the counts. Beside them, the ASR of no trigger at all (the all-0 baseline: the
    model's ordinary samples) and the models where it is at least the truth's, on which ASR cannot show the backdoor."""
    bd = [m.name for m in models if m.backdoored]
    by = {(e["model"], e["method"], e["k"]): e for e in es}
    truth = {m: by.get((m, "truth", None)) for m in bd}
    out = []
    for meth, k in sorted({(e["method"], e["k"]) for e in es if e["method"] in ("paper", "pdfast")},
                          key=lambda mk: (mk[0], mk[1] or 0)):
        rows = []
        for m in bd:
            a, b = by.get((m, meth, k)), by.get((m, "elijah", None))
            if a is None or b is None:
                continue
            asr_a, asr_b = (_get(x, "samples.all", "asr") for x in (a, b))
            if not asr_a or not asr_b:
                continue
            ta, tb = a["trigger"], b["trigger"]
            t, z = truth.get(m), by.get((m, "trivial:zeros", None))
            row = {"model": m, "stale": bool(a.get("stale") or b.get("stale")),
                   "truth_asr": _get(t, "samples.all", "asr") if t else None,
                   "no_trigger_asr": _get(z, "samples.all", "asr") if z and not z.get("stale") else None,
                   "asr": asr_a, "elijah_asr": asr_b,
                   "asr_at_least": asr_a["k"] * asr_b["n"] >= asr_b["k"] * asr_a["n"],
                   "l2": ta.get("l2"), "elijah_l2": tb.get("l2"), "l2_better": ta.get("l2") < tb.get("l2"),
                   "pattern_cos": ta.get("pattern_cos"), "elijah_pattern_cos": tb.get("pattern_cos"),
                   "pattern_cos_better": ta.get("pattern_cos") > tb.get("pattern_cos"),
                   "footprint_l2": ta.get("footprint_l2"), "elijah_footprint_l2": tb.get("footprint_l2"),
                   "footprint_better": ta.get("footprint_l2") < tb.get("footprint_l2")}
            row["fidelity_better"] = row["l2_better"] and row["pattern_cos_better"]
            zt, tt = row["no_trigger_asr"], row["truth_asr"]
            row["asr_blind"] = bool(zt and tt and zt["k"] * tt["n"] >= tt["k"] * zt["n"])
            row["best_trivial"], row["best_trivial_asr"] = _best_trivial(by, m)
            bt = row["best_trivial_asr"]
            row["trivial_blind"] = bool(bt and tt and bt["k"] * tt["n"] >= tt["k"] * bt["n"])
            row["in_strength_range"] = in_strength_range(tt)
            rows.append(row)
        if rows:
            cur = [r for r in rows if not r["stale"]]
            count = {key: sum(r[key] for r in cur) for key in
                     ("asr_at_least", "l2_better", "pattern_cos_better", "footprint_better", "fidelity_better")}
            strong = [r for r in cur if r["in_strength_range"]]
            out.append({"method": meth, "k": k, "models": rows, "n": len(cur), "counts": count,
                        "asr_blind": [r["model"] for r in cur if r["asr_blind"]],
                        "trivial_blind": [r["model"] for r in cur if r["trivial_blind"]],
                        "strength_range": {
                            "n": len(strong),
                            "counts": {key: sum(r[key] for r in strong) for key in ("asr_at_least", "fidelity_better")},
                            "outside": [r["model"] for r in cur if not r["in_strength_range"]]}})
    return out


def _best_trivial(by: dict, model: str) -> tuple[str | None, dict | None]:
    """The trivial trigger (all 0, -0.5, -1, Elijah's init) that fires most often on ``model`` (current code)."""
    best = (None, None)
    for t in TRIVIAL:
        e = by.get((model, f"trivial:{t}", None))
        a = _get(e, "samples.all", "asr") if e and not e.get("stale") and not e.get("error") else None
        if a and a.get("n") and (best[1] is None or a["k"] * best[1]["n"] > best[1]["k"] * a["n"]):
            best = (TRIVIAL_LABEL[t], a)
    return best


def in_strength_range(truth_asr: dict | None) -> bool | None:
    """Whether a backdoored model's own trigger fires on at least STRENGTH_MIN of its samples (None: not measured)."""
    if not truth_asr or not truth_asr.get("n"):
        return None
    return truth_asr["k"] >= STRENGTH_MIN * truth_asr["n"]


def _strength_md(h: dict) -> str:
    sr = h.get("strength_range")
    if not sr or not sr["outside"]:
        return ""
    c, n = sr["counts"], sr["n"]
    return (f" Beside the bar, not instead of it: on the {n} models whose true trigger fires on at least "
            f"{STRENGTH_MIN:g} of its samples (the strength range the zoo was meant to have), ASR at least Elijah's "
            f"on {c['asr_at_least']}/{n} and fidelity better on {c['fidelity_better']}/{n}; outside that range "
            f"(or truth not measured): {', '.join(sr['outside'])}.")


def head_to_head_md(h2h: list[dict]) -> str:
    if not h2h:
        return "No backdoored model has both this method's and Elijah's trigger yet.\n"
    parts = []
    for h in h2h:
        rows = [[r["model"] + (" †" if r["stale"] else ""), asr_cell({"asr": r["truth_asr"]}),
                 asr_cell({"asr": r["asr"]}), asr_cell({"asr": r["elijah_asr"]}), "yes" if r["asr_at_least"] else "NO",
                 f"{f4(r['l2'])} / {f4(r['elijah_l2'])}", f"{f4(r['pattern_cos'], 3)} / {f4(r['elijah_pattern_cos'], 3)}",
                 f"{f4(r['footprint_l2'])} / {f4(r['elijah_footprint_l2'])}",
                 "yes" if r["fidelity_better"] else "no",
                 asr_cell({"asr": r["no_trigger_asr"]}),
                 f"{asr_cell({'asr': r.get('best_trivial_asr')})} ({r.get('best_trivial')})" if r.get("best_trivial")
                 else "-"] for r in h["models"]]
        c, n = h["counts"], h["n"]
        label = h["method"] + (f" K={h['k']}" if h["k"] else "")
        parts.append(
            f"**{label} against Elijah** ({n} backdoored models with both, current code): ASR at least Elijah's on "
            f"{c['asr_at_least']}/{n}; L2 lower on {c['l2_better']}/{n}; pattern cos higher on "
            f"{c['pattern_cos_better']}/{n}; footprint L2 lower on {c['footprint_better']}/{n}; fidelity better (L2 "
            f"lower and pattern cos higher) on {c['fidelity_better']}/{n}. ASR compares counts over the same n; the "
            f"truth column says whether the model's own trigger fires at all, the no-trigger column how often the "
            f"model draws its target from plain noise (the all-0 baseline)"
            + (f"; plain noise fires at least as often as the true trigger on {len(h['asr_blind'])}/{n} "
               f"({', '.join(h['asr_blind'])}), where ASR cannot show the backdoor" if h["asr_blind"] else "")
            + (f"; a trivial trigger (one that knows nothing of the model: all 0, -0.5, -1 or Elijah's init) fires "
               f"at least as often as the true trigger on {len(h['trivial_blind'])}/{n} "
               f"({', '.join(h['trivial_blind'])})" if h.get("trivial_blind") else "")
            + "." + _strength_md(h) + "\n\n"
            + md_table(rows, ["model", "truth ASR", f"{label} ASR", "Elijah ASR", "ASR >= Elijah",
                              f"L2 ({label} / Elijah)", "pattern cos", "footprint L2", "fidelity better",
                              "no-trigger ASR", "best trivial ASR (which)"]))
    return "\n\n".join(parts) + "\n"


def detection_md(det: dict, split: str) -> str:
    if not det:
        return "No inversion results for this split yet.\n"
    parts = []
    for name, d in det.items():
        if d["method"] != "pdfast":
            continue
        sh = d["shipped_threshold"]
        rows = [[r["model"], "backdoored" if r["backdoored"] else "clean", r["kind"],
                 f4(r["pattern_uniformity (verdict)"]), f4(r.get("pattern_uniformity_q25 (verdict)")),
                 r.get("verdict", "-"), f4(r["uniformity (verdict)"]), f4(r["uniformity_trimmed (verdict)"]),
                 f4(r["kl_mean"]), f4(r["pattern_uniformity (all n)"]), f4(r["uniformity (all n)"]),
                 f4(r.get(TRIGGER_EFFECT), 3)]
                for r in d["models"]]
        thr_txt = (", ".join(f"{v:.4g} ({k}x{k})" for k, v in sh["threshold"].items()) + f" on {sh['statistic']}"
                   if sh else "-")
        parts.append(f"**pdfast K={d['k']}**: statistics of each model's inverted trigger; verdict at the shipped "
                     f"threshold {thr_txt} (below it = backdoored)"
                     + (f"; that threshold was calibrated at K={sh['calibrated_at_k']}" if sh and
                        sh['calibrated_at_k'] != d['k'] else "")
                     + (f"; left out of the rates, their pattern samples drawn at another energy than the "
                        f"calibration's: {', '.join(sh['other_energy'])}" if sh and sh.get('other_energy') else "")
                     + (f"; TPR over the backdoored models whose true trigger fires on at least {STRENGTH_MIN:g} of "
                        f"its samples: {stats.fmt_rate(sh['tpr_strength_range'])} (beside the TPR over all, not "
                        f"instead of it)" if sh and sh["tpr_strength_range"]["n"] and
                        sh["tpr_strength_range"]["n"] != sh["tpr"]["n"] else "")
                     + ".\n\n"
                     + md_table(rows, ["model", "label", "kind", "pattern unif (verdict)", "pattern unif q25 (verdict)",
                                       "verdict", "unif (verdict)", "unif trimmed (verdict)", "KL mean",
                                       "pattern unif (all n)", "unif (all n)", "pattern / no-trigger unif"]))
    rows = []
    for name, d in det.items():
        for stat, s in d["auc"].items():
            sh = d["shipped_threshold"] if d["shipped_threshold"] and d["shipped_threshold"]["statistic"] == stat else None
            rows.append([d["method"] + (f" K={d['k']}" if d["k"] else ""), stat, s["direction"], f4(s["auc"], 3),
                         f"{s['n_backdoored']}/{s['n_clean']}",
                         stats.fmt_rate(sh["tpr"]) if sh else "-", stats.fmt_rate(sh["tnr"]) if sh else "-"])
    parts.append(f"ROC AUC over the {split} models (Mann-Whitney, ties count 1/2; backdoored = positive) and, for the "
                 "shipped verdict statistic, TPR and TNR at the shipped threshold with Wilson 95% intervals and "
                 "counts (k/n). The calibration ships a threshold for that statistic only (no KL threshold), so the "
                 "other rows have an AUC and no rates; the threshold was calibrated for pdfast's defaults, so other "
                 "methods get no rates either. The statistic '" + TRIGGER_EFFECT + "' is what the inverted pattern "
                 "itself does to the model's output: the same 64 noises with the pattern and with no trigger at all "
                 "(the all-0 baseline); near 1 the pattern changes nothing, and a low pattern uniformity only says "
                 "that the model's ordinary samples are alike. The 'no trigger' row is the trivial detector that inverts nothing: "
                 "the uniformity of the model's ordinary samples. Where it separates the models as well, this "
                 "split cannot show what an inversion adds to detection.\n\n" + md_table(rows, ["method", "statistic", "direction", "AUC",
                                                         "backdoored/clean models", "TPR k/n [95% CI]",
                                                         "TNR k/n [95% CI]"]))
    return "\n\n".join(parts) + "\n"


HOW_TO_READ = """\
## How to read this

Each backdoored model has a hidden trigger g (a small picture on a flat -1 background; each model's heading gives
the share of pixels it covers) and a target y; eps + g makes the model draw y. Every row is one trigger on one model: the **truth** g itself, the
trigger inverted by **elijah** (Elijah, the baseline: t = T only, lambda 0.5), by **paper** (PureDiffusion as
printed: fresh noise each iteration, the objective of eq. 17 as printed, one stage) and by **pdfast** (pdfast's
defaults), and four **baseline** triggers that know nothing about the model (all 0, all -0.5, all -1 and
Elijah's starting point -U(0, 1) with seed 0). A method is only as good as its margin over those baselines: a
flat dark frame scores well on the plain L2 (most of g is -1) and, for a dark target, can pass the ASR test
(each model's heading gives the MSE of an all-black image to its y), without knowing anything about the backdoor.

- **ASR** k/n: samples from eps + trigger whose MSE to y (both in [0, 1]) is below 0.1, with the Wilson 95%
  interval. **unif** / **unif trimmed**: the mean pairwise MSE of the same samples and Elijah's trimmed form
  (low = the model collapses to one image). **pattern unif** / **pattern ASR**: the same for samples from
  eps + the trigger's pattern (its flat per-channel part removed, its energy kept), what pdfast's verdict judges.
  **KL mean**: TERD's statistic of the trigger.
- **L2**: ||trigger - g|| over the whole tensor. **footprint L2**: the same over the pixels where g is not
  background only. **pattern cos**: the cosine between the zero-mean patterns of the trigger and of g (see
  Fidelity below).
- **inversion s**: wall seconds of the optimisation; **calibration s**: the surrogate calibration of the lambda
  table (once per model and K, shared by paper and pdfast; "(cached)" = paid by the other method's run and
  counted there). Both measured on the device named above while other jobs shared the machine: compare rows of
  one run, not across machines.
- † marks a row computed by an older code version (the current one had not re-run it yet).

**What is the paper's and what is pdfast's.** `paper` is PureDiffusion (docs/method.md section 5) with pdfast's
answers to what the paper leaves open (L1 norm, surrogate backdoor planted with the model's own samples, -U(0, 1)
start, 30 Adam steps of batch 40, lr 0.1) and nothing else. `pdfast` changes four things, chosen on the dev models
(section 5.5): antithetic noise pairs, the relative objective, the L2 norm and the trigger projected onto
[-1, 1] after every step. The difference between the `paper` and `pdfast` rows measures those changes together,
on the same models, K, scales and seed. Detection (section 7) is pdfast's: the verdict compares the uniformity of
16 samples from eps + the PATTERN of the pdfast trigger with a threshold calibrated on clean models
(pdfast/detection_calibration.json); the detection tables score that statistic and the plain ones beside it.
"""

FIDELITY = """\
## Fidelity: why the pattern cosine

The plain L2 to g is dominated by the background: most of g's elements are exactly -1, so the all -1 frame is
already close to g (its L2 is the L2 of g's picture alone) and a dark inverted frame scores well without showing
any of the trigger. Two measures that the background cannot dominate:

- **pattern cos** = cos(p(tau), p(g)), p = `metrics.trigger_pattern` (per channel: the mean over pixels removed;
  the rescaling of p does not change a cosine). It is the correlation, pooled over channels, between the trigger
  and g across pixels: 1 when the trigger is g up to a positive scale and a flat per-channel offset, about 0 for
  an unrelated pattern (about +-1/sqrt(C H W) by chance: +-0.036 at 3 x 16 x 16), negative for an inverted
  picture, and defined as 0 for a flat trigger (no pattern at all), so every flat baseline scores 0. The offset and
  the scale are exactly what the inversion cannot pin down: a flat shift is answered by every model
  (docs/method.md 5.4) and lambda scales the trigger. It is also what the verdict judges (the pattern).
- **footprint L2** = ||(tau - g)[F]||, F the pixels where g != -1 (all channels): how close the trigger's values
  are to g's picture where there is one. The all -1 frame's footprint L2 equals its whole L2, so a method beats
  that baseline here only by putting the right values on the picture. It is not offset-invariant, so it also
  charges a trigger that has the right shape at the wrong level.
"""


def build_report(cache: Path, models: list[ZooModel], settings: Settings, code: dict, env: dict, git: dict,
                 command: str, planned: dict, md_path: Path, json_path: Path, sheet_path: Path) -> dict:
    from pdfast.detection import calibration

    entries = collect(cache, models, settings, code["id"])
    cal = calibration()
    splits = [s for s in ("dev", "test") if any(m.split == s for m in models)] + \
        sorted({m.split for m in models} - {"dev", "test"})
    det = {s: detection_scores(entries, models, s, lambda size: calibration(sample_size=size)) for s in splits}
    meta = {"date": _dt.datetime.now().isoformat(timespec="seconds"), "command": command, "git": git,
            "code_version": code, "environment": env, "settings": settings.ident(),
            "calibration": {**{k: cal.get(k) for k in ("statistic", "threshold", "pattern_rms", "kl_threshold",
                                                         "provenance", "settings", "date")},
                            "by_size": {size: {k: c.get(k) for k in ("statistic", "threshold", "pattern_rms",
                                                                     "provenance", "settings")}
                                        for size, c in sorted((cal.get("by_size") or {}).items(), key=lambda x: int(x[0]))}},
            "eval": {"n_samples": settings.n, "verdict_samples": min(settings.verdict_n, settings.n),
                     "verdict_seed": settings.verdict_seed, "rest_seed": EXTRA_SEED,
                     "asr_threshold": settings.asr_threshold, "engine": "fast (engine.sample, full DDPM chain)"}}
    versions: dict[str, int] = {}
    for e in entries:
        versions[e["code_version"]] = versions.get(e["code_version"], 0) + 1
    meta["cache"] = _show_path(cache)
    meta["changed_since"] = {v: changed_modules(cache, v, code["id"]) for v in versions if v != code["id"]}
    meta["entries_by_code_version"] = versions
    obj = {"schema": "pdfast.quality-report/1", **meta,
           "models": [{"name": m.name, "split": m.split, "kind": m.kind, "backdoored": m.backdoored,
                       "hash": m.hash, "recipe": m.recipe, "ground_truth_at_build": m.zoo.get("ground_truth")}
                      for m in models],
           "coverage": planned, "entries": entries, "detection": det,
           "head_to_head": {sp: head_to_head(entries, [m for m in models if m.split == sp]) for sp in splits},
           "truth_pattern_effect": {sp: truth_pattern_effect(entries, models, sp) for sp in splits}}
    write_json(json_path, obj)
    md_path.parent.mkdir(parents=True, exist_ok=True)
    from pdfast.io import atomic_write_bytes

    atomic_write_bytes(md_path, render_md(obj, models).encode())
    try:
        sheet(entries, models, cache, sheet_path,
              footer=f"{meta['date']}; commit {(git.get('commit') or '?')[:10]}"
                     f"{' (modified tree)' if git.get('dirty') else ''}; code {code['id']}; {env.get('device')}; "
                     f"torch {env.get('torch')}; n = {settings.n} samples per trigger"
                     + ("; SMOKE SETTINGS" if settings.smoke else ""))
    except Exception as e:  # noqa: BLE001 - a broken picture must not lose the tables
        log(f"warning: the trigger sheet failed: {type(e).__name__}: {e}")
    return obj


def _show_path(p: Path) -> str:
    p = Path(p).resolve()
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p)


def truth_tensors(m: ZooModel):
    """(g, y) from the model folder's backdoor.safetensors (pdfast.attack.save_backdoored), or (None, None)."""
    from safetensors.torch import load_file

    from pdfast.loading import GROUND_TRUTH_FILE

    f = m.path / GROUND_TRUTH_FILE
    if not m.backdoored or not f.is_file():
        return None, None
    t = load_file(str(f))
    return t["trigger"], t["target"]


def quality_footprint_share(g) -> float:
    """Share of the pixels in the true trigger's footprint (g != -1 in any channel)."""
    return float((g != -1).any(dim=0).float().mean())


def _thresholds_line(cal: dict) -> str:
    """The shipped detection thresholds, one per image size when the calibration has them, with their provenance."""
    per = cal.get("by_size") or {"": cal}
    parts = []
    for size, c in per.items():
        rms = f", pattern at rms {c['pattern_rms']:g}" if c.get("pattern_rms") else ""
        where = f"{size}x{size}: " if size else ""
        parts.append(f"{where}{c.get('statistic')} < {f4(c.get('threshold'))}{rms} ({c.get('provenance')})")
    return "Detection thresholds: " + "; ".join(parts) + "."


def render_md(obj: dict, models: list[ZooModel]) -> str:
    env, git, s = obj["environment"], obj["git"], obj["settings"]
    ev = obj["eval"]
    smoke = " **SMOKE SETTINGS (tiny inversions): not results.**" if s["smoke"] else ""
    lines = [
        "# Quality of the inverted triggers and of detection on the model zoo",
        "",
        f"Generated {obj['date']} by `{obj['command']}` from the cache `{obj['cache']}`; regenerate with "
        "`python research/quality.py --report-only` (do not edit by hand)." + smoke,
        "",
        f"Commit {git.get('commit')} (working tree {'modified' if git.get('dirty') else 'clean'}); code version "
        f"{obj['code_version']['id']} (hash of {obj['code_version']['modules']} pdfast modules and native kernel "
        f"files, eval version {obj['code_version']['eval_version']}); device {env.get('device')}, {env.get('torch_threads')} torch "
        f"thread(s); pdfast {env.get('pdfast')}, torch {env.get('torch')}, diffusers {env.get('diffusers')}, "
        f"python {env.get('python')}, {env.get('platform')}.",
        "",
        f"Samples: n = {ev['n_samples']} per trigger and n = {ev['n_samples']} per pattern, the full DDPM chain "
        f"(all T steps) through the fast engine (`engine.sample`); the first "
        f"{ev['verdict_samples']} with seed {ev['verdict_seed']} (the samples pdfast's verdict draws, so the "
        f"'(verdict)' statistics are the shipped verdict's), the other {ev['n_samples'] - ev['verdict_samples']} "
        f"with seed {ev['rest_seed']}. ASR threshold: MSE < {ev['asr_threshold']}. Inversions: seed 0. "
        + _thresholds_line(obj["calibration"]),
        "",
        HOW_TO_READ,
        FIDELITY,
        "## Coverage",
        "",
        md_table([[sp, c["models"], c["done"], c["planned"], c["stale"]] for sp, c in obj["coverage"].items()],
                 ["split", "built models", "units done (current code)", "units planned", "units from older code"]),
        "",
        "Entries shown, by code version: "
        + (", ".join(f"{v} ({n}{', current' if v == obj['code_version']['id'] else ''})"
                     for v, n in obj["entries_by_code_version"].items()) or "none")
        + ". A code version changes when a pdfast module that computes a number changes (docstrings and comments "
        "excluded); rows of another version are marked †."
        + "".join(f" Changed from {v} to the current version: {', '.join(c) if c else 'not recorded'}."
                  for v, c in obj.get("changed_since", {}).items()),
        "",
    ]
    by_model: dict[str, list] = {}
    for e in obj["entries"]:
        by_model.setdefault(e["model"], []).append(e)
    for sp in [k for k in obj["detection"]]:
        ms = [m for m in models if m.split == sp]
        lines += [f"## Split: {sp}", "",
                  f"{len(ms)} built models: {sum(m.backdoored for m in ms)} backdoored, "
                  f"{sum(not m.backdoored for m in ms)} clean.", ""]
        es = [e for m in ms for e in by_model.get(m.name, [])]
        lines += [f"### Summary over the {sp} backdoored models", "",
                  summary_table(es, ms) if any(m.backdoored for m in ms) else "No backdoored models.", "",
                  f"### Against the baseline, model by model ({sp})", "", head_to_head_md(obj["head_to_head"][sp]), "",
                  f"### Detection ({sp})", "", detection_md(obj["detection"][sp], sp), "",
                  truth_pattern_md(obj.get("truth_pattern_effect", {}).get(sp, [])), "",
                  f"### Per model ({sp})", ""]
        for m in ms:
            r = m.recipe
            desc = (f"backdoored: BadDiffusion {r.get('trigger')} -> {r.get('target')}, poison rate "
                    f"{r.get('poison_rate')}, {r.get('steps')} steps on {r.get('base')}") if m.backdoored else \
                (f"clean ({m.kind}{', ' + r['note'] if r.get('note') else ''})")
            gt = m.zoo.get("ground_truth") or {}
            gt_txt = (f"; at build: truth ASR {f4(gt.get('asr'), 3)} over {gt.get('n')} samples" if "asr" in gt
                      else "")
            g, y = truth_tensors(m)
            if y is not None:
                from pdfast import metrics

                black = float(metrics.per_image_mse(-y.new_ones(y.shape)[None], y)[0])
                cover = float(quality_footprint_share(g))
                gt_txt += (f"; g covers {100 * cover:.1f}% of the pixels; an all-black image has MSE {black:.3f} to y "
                           f"(ASR counts MSE < {ev['asr_threshold']})")
            lines += [f"#### {m.name}", "", f"{desc}{gt_txt}.", ""]
            mes = by_model.get(m.name, [])
            lines += [per_model_table(mes) if mes else "Not measured yet.", ""]
    lines += ["## Trigger sheet", "", "`research/results/quality-triggers.png`: per model, the target y and the true "
              "trigger g, then each method's trigger (clamped to [-1, 1]), its pattern contrast-stretched to the full "
              "range (p*, to show faint structure) and its first sample from eps + trigger (seed 0).", ""]
    return "\n".join(lines) + "\n"


def sheet(entries: list[dict], models: list[ZooModel], cache: Path, path: Path, panel: int = 64,
          footer: str = "") -> None:
    """One row per model: target, truth (+ its first sample), then for every method its trigger, stretched pattern
    and first sample; labelled. pdfast.io's image conversion and text rendering."""
    import torch
    from PIL import Image
    from safetensors.torch import load_file

    from pdfast.io import text_mask, atomic_write_bytes, to_uint8

    def tile(img: torch.Tensor) -> Image.Image:
        a = to_uint8(img.float())
        im = Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a).convert("RGB")
        return im.resize((panel, panel), Image.NEAREST)

    def stretch(p: torch.Tensor) -> torch.Tensor:
        lo, hi = float(p.min()), float(p.max())
        return torch.zeros_like(p) if hi - lo < 1e-12 else (p - lo) / (hi - lo) * 2 - 1

    by_model: dict[str, list] = {}
    for e in entries:
        if not e["method"].startswith("trivial:"):
            by_model.setdefault(e["model"], []).append(e)
    # fixed columns, so every method sits under the same heading in every row (blank where not run)
    inv_keys = sorted({(method_order(e), method_label(e)) for es in by_model.values() for e in es
                       if e["method"] != "truth"})
    columns = ["target y", "truth g", "g sample"]
    for _, lab in inv_keys:
        lab = lab.replace(" K=", " K")
        columns += [lab, f"{lab} p*", f"{lab} sample"]
    rows = []
    for m in models:
        es = sorted(by_model.get(m.name, []), key=method_order)
        if not es:
            continue
        cells: dict[str, Image.Image] = {}
        g, y = truth_tensors(m)
        if g is not None:
            cells["target y"], cells["truth g"] = tile(y), tile(g)
        for e in es:
            f = cache / e["file"]
            try:
                t = load_file(str(f.with_suffix(".safetensors")))
            except Exception:  # noqa: BLE001 - no tensors (a failed unit) or an unreadable file: a blank panel
                continue
            if e["method"] == "truth":
                cells["g sample"] = tile(t["samples"][0])
                continue
            lab = method_label(e).replace(" K=", " K")
            cells[lab] = tile(t["trigger"].clamp(-1, 1))
            cells[f"{lab} p*"] = tile(stretch(t["pattern"]))
            cells[f"{lab} sample"] = tile(t["samples"][0])
        panels = [(c, cells.get(c)) for c in columns]
        rows.append((f"{m.name} ({m.split}, {'backdoored' if m.backdoored else 'clean'})", panels))
    if not rows:
        return
    px = 13
    lab_h, name_h, gap = px + 6, px + 10, 4
    ncol = max(len(p) for _, p in rows)
    legend = text_mask("triggers clamped to [-1, 1]; p* = pattern (flat part removed) stretched to full range; "
                        "sample = first image from eps + trigger", px)
    foot = text_mask(footer, px - 2) if footer else None
    width = max(ncol * (panel + gap) + gap, legend.width + 2 * gap, (foot.width + 2 * gap) if foot else 0)
    height = sum(name_h + lab_h + panel + gap for _ in rows) + 3 * (px + 8)
    pic = Image.new("RGB", (width, height), "white")
    pic.paste("black", (gap, 4), legend)
    yoff = px + 12
    for name, panels in rows:
        pic.paste("black", (gap, yoff + 2), text_mask(name, px + 1))
        yoff += name_h
        for i, (lab, im) in enumerate(panels):
            if im is None:
                continue
            x = gap + i * (panel + gap)
            mk = text_mask(lab, px - 3)
            if mk.width > panel:
                mk = mk.resize((panel, max(1, mk.height * panel // mk.width)))
            pic.paste("black", (x, yoff + (lab_h - mk.height) // 2), mk)
            pic.paste(im, (x, yoff + lab_h))
        yoff += lab_h + panel + gap
    if foot is not None:
        pic.paste("black", (gap, yoff + 2), foot)
    import io

    buf = io.BytesIO()
    pic.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


# ====================================================================== main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    a = ap.parse_args(argv)
    command = "python research/quality.py " + " ".join(argv if argv is not None else sys.argv[1:])

    if a.smoke and a.out is None and a.cache is None:
        print("error: --smoke writes test numbers; give --out DIR so they stay out of the repository's results",
              file=sys.stderr)
        return 2
    if a.n_samples < 64 and not a.smoke:
        log(f"warning: --n-samples {a.n_samples} is below the 64 the evidence promises (ASR steps of 1/64)")
    if a.n_samples < 2:
        print("error: --n-samples must be at least 2", file=sys.stderr)
        return 2
    methods = [x.strip() for x in a.methods.split(",") if x.strip()]
    bad = [x for x in methods if x not in METHODS]
    if bad:
        print(f"error: unknown method {bad[0]}; use {','.join(METHODS)}", file=sys.stderr)
        return 2
    try:
        ks = sorted({int(x) for x in a.ks.split(",") if x.strip()})
    except ValueError:
        print(f"error: --ks {a.ks}: comma-separated integers", file=sys.stderr)
        return 2
    overrides = {}
    for s in a.set:
        k, _, v = s.partition("=")
        try:
            overrides[k.strip()] = json.loads(v)
        except ValueError:
            overrides[k.strip()] = v

    import signal

    # `kill PID` ends a run like Ctrl-C: the held unit's lock is released (the handler is restored on return)
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        return _run(a, command, methods, ks, overrides)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(a, command: str, methods: list[str], ks: list[int], overrides: dict) -> int:
    import torch

    torch.set_num_threads(max(1, a.threads))
    cache = a.cache or (a.out / "quality" if a.out else CACHE)
    md_path = a.out / "results.md" if a.out else REPORT_MD
    json_path = a.out / "quality.json" if a.out else REPORT_JSON
    sheet_path = a.out / "quality-triggers.png" if a.out else SHEET
    recipe = a.recipe or (RECIPE if a.zoo.resolve() == ZOO.resolve() else None)

    from pdfast.config import DetectionConfig

    dcfg = DetectionConfig()
    settings = Settings(n=a.n_samples, verdict_n=a.verdict_n or dcfg.n_eval, verdict_seed=dcfg.eval_seed,
                        asr_threshold=0.1, smoke=a.smoke, overrides=overrides)
    cache.mkdir(parents=True, exist_ok=True)
    code = code_version(cache)
    os.environ["PDFAST_CACHE_DIR"] = str(pdfast_cache(cache, code["id"]))
    cache.mkdir(parents=True, exist_ok=True)
    from pdfast.envinfo import environment

    env = environment()
    env.pop("kernels", None)
    git = git_info()
    log(f"code version {code['id']}, settings {settings.id()}, cache {cache}, {env.get('device')}, "
        f"{torch.get_num_threads()} thread(s)")

    def selected(all_models):
        ms = [m for m in all_models if a.split == "all" or m.split == a.split]
        if a.models:
            unknown = set(a.models) - {m.name for m in all_models}
            if unknown:
                log(f"not built (yet): {', '.join(sorted(unknown))}")
            ms = [m for m in ms if m.name in a.models] if a.split != "all" else \
                [m for m in all_models if m.name in a.models]
        return ms

    def coverage(all_models) -> dict:
        """Per split: planned units, done with the current code, and shown from an older version instead."""
        full = plan(all_models, methods, ks, set(a.k1000_models), settings, cache, code["id"])
        shown = {(e["model"], e["method"], e["k"]): e["stale"] for e in collect(cache, all_models, settings, code["id"])}
        out = {}
        for m in all_models:
            c = out.setdefault(m.split, {"models": 0, "done": 0, "planned": 0, "stale": 0})
            c["models"] += 1
        for u in full:
            c = out[u.model.split]
            c["planned"] += 1
            cur = entry_path(cache, u, code["id"]).is_file()
            c["done"] += cur
            c["stale"] += (not cur) and shown.get((u.model.name, u.method, u.k)) is True
        return out

    def report(all_models):
        build_report(cache, all_models, settings, code, env, git, command, coverage(all_models), md_path, json_path,
                     sheet_path)

    all_models = scan_zoo(a.zoo, recipe)
    if a.report_only:
        report(all_models)
        log(f"wrote {md_path}, {json_path}, {sheet_path}")
        return 0

    done_units = 0
    start = time.time()
    while True:
        models = selected(all_models)
        units = plan(models, methods, ks, set(a.k1000_models), settings, cache, code["id"])
        todo = [u for u in units if not entry_path(cache, u, code["id"]).is_file()]
        if a.dry_run:
            return dry_run(units, todo, settings, cache, code["id"])
        log(f"{len(models)} models ({a.split}), {len(units)} units, {len(todo)} to run")
        ctxs: dict[str, ModelCtx] = {}
        for u in todo:
            if a.max_units is not None and done_units >= a.max_units:
                break
            if entry_path(cache, u, code["id"]).is_file():
                continue
            lock = take_lock(cache, u)
            if lock is None:
                log(f"skip {u.model.name} {u.label}: another run holds it")
                continue
            try:
                if u.model.name not in ctxs:
                    ctxs.clear()  # one model in memory at a time (the units are ordered by method first)
                    ctxs[u.model.name] = ModelCtx(u.model)
                log(f"run {u.model.name} {u.label} ...")
                t0 = time.perf_counter()
                try:
                    rec = run_unit(u, ctxs[u.model.name], settings, cache, code["id"], env)
                except PdfastError as err:  # e.g. a diverged inversion: a result, recorded as such
                    rec = error_entry(u, settings, cache, code["id"], env, str(err))
                    log(f"failed {u.model.name} {u.label}: {err} (recorded)")
                except Exception:  # noqa: BLE001 - a bug or out of memory on one unit: keep going, do not cache
                    import traceback

                    log(f"error in {u.model.name} {u.label} (not recorded, retried next run):\n"
                        + traceback.format_exc())
                    continue
                done_units += 1
                asr = rec["samples"]["all"].get("asr") if "error" not in rec else None
                log(f"done {u.model.name} {u.label} in {time.perf_counter() - t0:.0f} s: ASR "
                    f"{stats.fmt_rate(asr) if asr else '-'}, pattern unif "
                    f"{f4(rec['pattern_samples']['all'].get('uniformity'))}, pattern cos "
                    f"{f4(rec['trigger'].get('pattern_cos'), 3)}")
            finally:
                lock.unlink(missing_ok=True)
            report(all_models)
        if a.max_units is not None and done_units >= a.max_units:
            break
        if not a.follow:
            break
        waiting = _waiting_for(recipe, all_models, a)
        if not waiting or time.time() - start > 48 * 3600:
            break
        log(f"waiting for {len(waiting)} models to be built ({', '.join(waiting[:4])}...); next scan in "
            f"{a.follow_poll:.0f} s")
        time.sleep(a.follow_poll)
        all_models = scan_zoo(a.zoo, recipe)
    report(all_models)
    log(f"{done_units} units run; wrote {md_path}, {json_path}, {sheet_path}")
    return 0


def _waiting_for(recipe: Path | None, built: list[ZooModel], a) -> list[str]:
    """Recipe models of the selected split (and --models) that are not built yet; none without a recipe."""
    if recipe is None or not recipe.is_file():
        return []
    have = {m.name for m in built}
    want = [m["name"] for m in json.loads(recipe.read_text()).get("models", [])
            if (a.split == "all" or m.get("split") == a.split) and (not a.models or m["name"] in a.models)]
    return [n for n in want if n not in have]


def dry_run(units: list[Unit], todo: list[Unit], settings: Settings, cache: Path, code: str) -> int:
    rates: dict[tuple, tuple[float, float]] = {}
    calibrated: set = set()
    total = 0.0
    print(f"{len(units)} units planned, {len(units) - len(todo)} cached, {len(todo)} to run "
          f"(n = {settings.n} samples per trigger and per pattern)")
    ctxs: dict[str, ModelCtx] = {}
    for u in todo:
        if u.model.name not in ctxs:
            ctxs[u.model.name] = ModelCtx(u.model)
        ctx = ctxs[u.model.name]
        arch = (ctx.shape, sum(p.numel() for p in ctx.model.net.parameters()))
        if arch not in rates:
            rates[arch] = probe(ctx)
        s = estimate(u, ctx, rates[arch], settings, cache, code, calibrated)
        total += s
        print(f"  {u.model.name:20s} {u.model.split:5s} {u.label:22s} ~{s / 60:6.1f} min", flush=True)
    for arch, (a_, b_) in rates.items():
        print(f"probe {arch[0]} ({arch[1]} parameters): {1000 * a_:.2f} ms per chain step + {1000 * b_:.3f} ms per "
              "image in it (engine.sample)")
    print(f"estimated CPU time: {total / 3600:.2f} h ({total / 60:.0f} min) at this machine's current load, one "
          "thread (rough: sampling is n x T chain steps per sample set, an inversion ~3.5 network calls per chain "
          "step per noise, the surrogate calibration once per model and K)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
