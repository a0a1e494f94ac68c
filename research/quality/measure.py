"""Measuring one unit: invert (or take the truth or a trivial trigger), sample from eps + trigger and from eps + its
pattern through the fast engine, score the images and the trigger, and write the entry."""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

import stats

from .base import save_tensors, write_json
from .cache import entry_path
from .planner import EXTRA_SEED, Settings, Unit
from .zoo import ZooModel

if TYPE_CHECKING:
    import torch


class ModelCtx:
    """A loaded model, its sampling engine and ground truth."""

    def __init__(self, m: ZooModel):
        import torch

        from pdfast.engine import make_engine
        from pdfast.loading import load_ground_truth, load_model

        self.info = m
        self.model = load_model(m.path)
        self.model.extra["content_hash"] = m.hash or self.model.content_hash()
        self.engine = make_engine("fast", self.model)
        self.truth, self.target = load_ground_truth(self.model)
        self.shape = self.model.shape
        self.torch = torch


def trivial_trigger(name: str, shape) -> "torch.Tensor":
    """A baseline trigger that knows nothing of the model (TRIVIAL): all 0, all -0.5, all -1, Elijah's init."""
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
    """Contrast, uniformity (plain, trimmed, lower quartile) and, with a target, ASR at MSE < thr."""
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


def obtain_trigger(u: Unit, ctx: ModelCtx) -> tuple["torch.Tensor", dict, dict]:
    """(trigger, timing, inversion record) of a unit: the truth, a trivial trigger, or pdfast.invert with the unit's
    options (no evaluation: the trigger is measured here); an interrupted inversion stops the run."""
    import pdfast

    if u.method == "truth":
        return ctx.truth, {}, {}
    if u.method.startswith("trivial:"):
        return trivial_trigger(u.method.split(":", 1)[1], ctx.shape), {}, {}
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
    return res.trigger, timing, inv


def _entry_head(u: Unit, settings: Settings, code: str) -> dict:
    """What every entry starts with: the model, the unit and its identity, the settings."""
    m = u.model
    return {"schema": "pdfast.quality/1", "model": m.name, "split": m.split, "kind": m.kind,
            "backdoored": m.backdoored, "model_hash": m.hash, "method": u.method, "k": u.k, "ident": u.ident,
            "code_version": code, "settings": settings.ident(), "settings_id": settings.id(), "options": u.options}


def run_unit(u: Unit, ctx: ModelCtx, settings: Settings, cache: Path, code: str, env: dict) -> dict:
    """Invert (or take the truth / a trivial trigger), measure, and write the entry (JSON + safetensors)."""
    from pdfast.detection import verdict_pattern

    trigger, timing, inv = obtain_trigger(u, ctx)
    trigger = trigger.detach().float().cpu().reshape(ctx.shape)
    pattern, rms = verdict_pattern(trigger, ctx.model.sample_size)  # exactly the pattern pdfast's verdict samples
    ev_t, first_t = evaluate(ctx, trigger, settings, cache, code)
    ev_p, first_p = evaluate(ctx, pattern, settings, cache, code)
    rec = {**_entry_head(u, settings, code),
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
    rec = {**_entry_head(u, settings, code), "error": message, "trigger": {}, "samples": {"all": {}, "verdict": {}},
           "pattern_samples": {"all": {}, "verdict": {}}, "timing": {}, "inversion": {},
           "date": _dt.datetime.now().isoformat(timespec="seconds"), "device": env.get("device")}
    write_json(entry_path(cache, u, code), rec)
    return rec
