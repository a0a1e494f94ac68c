"""Backdoor detection from an inverted (or given) trigger (docs/method.md section 7): the layer above inversion.

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
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from . import metrics
from .model import DiffusionModel

log = logging.getLogger(__name__)
CALIBRATION_FILE = Path(__file__).resolve().parent / "detection_calibration.json"


# Without the shipped calibration file the verdict still uses the statistic it was calibrated for, with a threshold
# far below every clean model measured (pattern uniformity 0.34-0.43, bench/results/detection-calibration.md):
# conservative (it calls a model backdoored only when its pattern's samples are nearly identical) and said so.
FALLBACK = {"statistic": "pattern_uniformity", "threshold": 0.01, "kl_threshold": None,
            "provenance": "uncalibrated fallback: detection_calibration.json missing"}


def calibration(path: Path | None = None, sample_size: int | None = None) -> dict:
    """The shipped threshold calibration (threshold, statistic, the models and command it came from). A file may
    hold one calibration per image size under "by_size"; the one of ``sample_size`` is returned when present,
    else the top-level one (whose settings then say which size it was made for)."""
    try:
        cal = json.loads(Path(path or CALIBRATION_FILE).read_text())
    except (OSError, ValueError):
        return dict(FALLBACK)
    by_size = cal.get("by_size") or {}
    return by_size.get(str(sample_size), cal) if sample_size is not None else cal


def verdict_pattern(trigger: torch.Tensor, sample_size: int | None, pattern_rms: float | None = None):
    """(pattern, rms): the pattern the verdict samples from, at ``pattern_rms`` or else the energy its size's
    calibration was made with (None: the trigger's own energy)."""
    rms = pattern_rms if pattern_rms is not None else calibration(sample_size=sample_size).get("pattern_rms")
    return metrics.trigger_pattern(trigger, rms), rms


def judge(result, model: DiffusionModel, engine, *, n: int = 16, seed: int = 0, threshold: float | None = None,
          pattern_rms: float | None = None, progress: bool = False) -> dict:
    """Sample n images from eps + trigger and n from eps + its pattern (the same noise), compute the metrics and the
    verdict; stores them on ``result``."""
    from .loading import load_ground_truth

    gt_trigger, gt_target = load_ground_truth(model)
    t0 = time.perf_counter()
    pattern, rms = verdict_pattern(result.trigger, model.sample_size, pattern_rms)
    imgs, pattern_imgs = engine.sample_together(n, [result.trigger.to(model.device), pattern.to(model.device)],
                                                seed=seed, progress=progress)
    m: dict = {"n_samples": n, "sample_seed": seed, "sampling_seconds": round(time.perf_counter() - t0, 3)}
    m.update(metrics.evaluate_images(imgs, None))
    m["image_contrast"] = metrics.image_contrast(imgs)
    m.update(metrics.kl_statistic(result.trigger))
    m["pattern_rms"] = rms
    m["pattern_uniformity"] = metrics.uniformity(pattern_imgs)
    m["pattern_uniformity_trimmed"] = metrics.uniformity_trimmed(pattern_imgs)
    m["pattern_uniformity_q25"] = metrics.uniformity_q25(pattern_imgs)
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
    m["detection"] = verdict(m, threshold, _settings(result, model))
    result.metrics = m
    result.samples = imgs
    result.pattern_samples = pattern_imgs
    return m


def _settings(result, model: DiffusionModel) -> dict:
    """The settings a calibration must share with this run to apply: method, K and image size."""
    if result.given_trigger:
        return {"sample_size": model.sample_size}
    return {"method": result.config.method, "steps": result.config.steps, "sample_size": model.sample_size,
            "preset": result.config.preset if result.config.method == "puredif" else None}


def verdict(m: dict, threshold: float | None, settings: dict) -> dict:
    """The verdict from the calibrated statistic: backdoored when value < threshold, with its margin
    log(value / threshold) (negative: backdoored; |margin| < 0.5 is within a factor 1.65 of the threshold) and a
    warning when the calibration was made with other settings (method, K, image size) than this run."""
    cal = calibration(sample_size=settings.get("sample_size"))
    thr = float(threshold) if threshold is not None else float(cal["threshold"])
    stat = cal.get("statistic", "pattern_uniformity")
    value = float(m[stat])
    mismatch = {k: {"calibration": cal.get("settings", {}).get(k), "run": v} for k, v in settings.items()
                if k in cal.get("settings", {}) and cal["settings"][k] != v}
    if mismatch and threshold is None:
        log.warning("the detection threshold was calibrated with other settings (%s); recalibrate with "
                    "bench/calibrate_detection.py or pass --threshold", ", ".join(
                        f"{k} {d['calibration']} vs {d['run']}" for k, d in mismatch.items()))
    kl_thr = cal.get("kl_threshold")
    return {
        "verdict": "backdoored" if value < thr else "clean",
        "statistic": stat,
        "value": value,
        "threshold": thr,
        "margin": math.log(max(value, 1e-12) / thr) if thr > 0 else None,
        "threshold_source": "--threshold" if threshold is not None else cal.get("provenance", str(CALIBRATION_FILE)),
        "calibration_mismatch": mismatch or None,
        "kl_signal": None if kl_thr is None else {"kl_mean": m["kl_mean"], "threshold": kl_thr,
                                                  "verdict": "backdoored" if m["kl_mean"] > kl_thr else "clean"},
    }


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
