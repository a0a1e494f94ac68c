"""The cost of a plan before it runs (--dry-run): the engine's sampling speed probed on this machine and a model of
each unit's chain steps."""
from __future__ import annotations

import math
import time
from pathlib import Path

from .cache import pdfast_cache
from .measure import ModelCtx
from .planner import Settings, Unit, resolved_config


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
    """Whether the surrogate scale table of (model, K, surrogate settings) is already in this code's pdfast cache."""
    from pdfast.config import SurrogateConfig

    key = f"{ctx.info.hash}-K{k}-{SurrogateConfig(**cfg['surrogate']).key()}"
    return (pdfast_cache(cache, code) / "scales" / f"{key}.json").is_file()


def dry_run(units: list[Unit], todo: list[Unit], settings: Settings, cache: Path, code: str) -> int:
    """Print what would run, each unit's estimated minutes (the speed probed once per architecture), the total."""
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
