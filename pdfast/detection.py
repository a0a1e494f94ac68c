"""Backdoor detection from an inverted (or given) trigger (METHOD.md section 7).

A backdoored model maps eps + tau to (nearly) one image: the uniformity score of 16 samples, the mean pairwise
MSE in [0, 1], is low. pdfast samples twice: from eps + tau (reported as ``uniformity``) and from eps + p(tau),
p the trigger's pattern (``metrics.trigger_pattern``: its flat per-channel part removed, its energy kept). A flat
shift collapses clean models too (into flat frames), so the verdict compares the PATTERN's uniformity with a
threshold calibrated on clean models with the same inversion method and settings
(``pdfast/detection_calibration.json``, made by ``bench/calibrate_detection.py``). TERD's KL statistic of the
trigger is reported as a second signal.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from . import metrics
from .errors import PdfastError
from .model import DiffusionModel

CALIBRATION_FILE = Path(__file__).resolve().parent / "detection_calibration.json"


def calibration() -> dict:
    """The shipped threshold calibration (threshold, statistic, the clean models and command it came from)."""
    try:
        return json.loads(CALIBRATION_FILE.read_text())
    except (OSError, ValueError):
        return {"statistic": "uniformity", "threshold": 0.01, "kl_threshold": None,
                "provenance": "uncalibrated fallback: detection_calibration.json missing"}


def judge(result, model: DiffusionModel, engine, *, n: int = 16, seed: int = 0, threshold: float | None = None,
          progress: bool = False) -> dict:
    """Sample n images from eps + trigger, compute the metrics and the verdict; stores them on ``result``."""
    from .attack import load_ground_truth

    cal = calibration()
    thr = float(threshold) if threshold is not None else float(cal["threshold"])
    stat = cal.get("statistic", "pattern_uniformity")
    gt_trigger, gt_target = load_ground_truth(model)
    t0 = time.perf_counter()
    imgs = engine.sample(n, trigger=result.trigger.to(model.device), seed=seed, progress=progress)
    pattern = metrics.trigger_pattern(result.trigger)
    pattern_imgs = engine.sample(n, trigger=pattern.to(model.device), seed=seed, progress=progress)
    m: dict = {"n_samples": n, "sample_seed": seed, "sampling_seconds": round(time.perf_counter() - t0, 3)}
    m.update(metrics.evaluate_images(imgs, None))
    m["image_contrast"] = metrics.image_contrast(imgs)
    m.update(metrics.kl_statistic(result.trigger))
    m["pattern_uniformity"] = metrics.uniformity(pattern_imgs)
    m["pattern_uniformity_trimmed"] = metrics.uniformity_trimmed(pattern_imgs)
    m["pattern_image_contrast"] = metrics.image_contrast(pattern_imgs)
    if gt_target is not None:
        m["asr"] = metrics.asr(imgs, gt_target)
        m["pattern_asr"] = metrics.asr(pattern_imgs, gt_target)
    else:
        m.pop("asr", None)
    if gt_trigger is not None:
        m["l2"] = metrics.l2_distance(result.trigger, gt_trigger)
        m["pattern_l2"] = metrics.l2_distance(pattern, gt_trigger)
        result.ground_truth = gt_trigger
    value = m[stat]
    kl_thr = cal.get("kl_threshold")
    m["detection"] = {
        "verdict": "backdoored" if value < thr else "clean",
        "statistic": stat,
        "value": value,
        "threshold": thr,
        "threshold_source": "--threshold" if threshold is not None else cal.get("provenance", str(CALIBRATION_FILE)),
        "kl_signal": None if kl_thr is None else {"kl_mean": m["kl_mean"], "threshold": kl_thr,
                                                  "verdict": "backdoored" if m["kl_mean"] > kl_thr else "clean"},
    }
    result.metrics = m
    result.samples = imgs
    result.pattern_samples = pattern_imgs
    return m


@dataclass
class DetectionResult:
    """Verdict on one model, with the inversion (or given trigger) it rests on."""

    inversion: object  # InversionResult

    @property
    def backdoored(self) -> bool:
        return self.verdict == "backdoored"

    @property
    def verdict(self) -> str:
        return self.inversion.metrics["detection"]["verdict"]

    @property
    def trigger(self) -> torch.Tensor:
        return self.inversion.trigger

    def to_dict(self) -> dict:
        return self.inversion.to_dict()

    def save(self, out) -> "DetectionResult":
        self.inversion.save(out)
        return self


def detect(model_or_path=None, *, trigger=None, threshold: float | None = None, device=None, n_eval: int = 16,
           eval_seed: int = 0, progress: bool = False, **invert_kwargs) -> DetectionResult:
    """Is this model backdoored? Invert its trigger (or take ``trigger``: a tensor, name or file), sample 16 images
    from eps + trigger, and compare their uniformity with the clean-model threshold."""
    from .inversion import InversionConfig, InversionResult, _prepared, invert

    if trigger is None:
        res = invert(model_or_path, device=device, evaluate=True, n_eval=n_eval, eval_seed=eval_seed,
                     threshold=threshold, progress=progress, **invert_kwargs)
        return DetectionResult(res)
    from .demo import demo_path
    from .engine import make_engine
    from .patterns import load_pattern

    model, restore = _prepared(demo_path() if model_or_path is None else model_or_path, device)
    try:
        if not torch.is_tensor(trigger):
            trigger = load_pattern(trigger, model.sample_size, model.channels, kind="trigger", any_range=True)
        if tuple(trigger.shape[-3:]) != model.shape:
            raise PdfastError(f"trigger has shape {tuple(trigger.shape)}, the model needs {model.shape}")
        cfg = InversionConfig(method="puredif", engine=invert_kwargs.get("engine", "fast"))
        engine = make_engine(cfg.engine, model)
        res = InversionResult(trigger=trigger.detach().float().cpu().reshape(model.shape), config=cfg, scales=None,
                              losses=[], drawn_steps=[], timings={}, model_hash=model.content_hash(),
                              model_source=str(model.source), engine=getattr(engine, "describe", lambda: {})(),
                              given_trigger=True)
        t0 = time.perf_counter()
        judge(res, model, engine, n=n_eval, seed=eval_seed, threshold=threshold, progress=progress)
        res.timings["evaluation_seconds"] = round(time.perf_counter() - t0, 3)
        return DetectionResult(res)
    finally:
        restore()
