"""Backdoor detection from an inverted (or given) trigger (docs/method.md section 7): the layer above inversion.

A backdoored model sends eps + tau to one image (its target) that the same noises do not reach without the trigger.
``judge`` samples n_eval chains from the same noises four times: from eps + tau, from eps alone, from eps + the
trigger's flat part (its per-channel mean; a flat shift collapses clean models too, into flat frames) and from
eps + its pattern (``metrics.trigger_pattern``, the statistic of verdict v1). Verdict v2's statistic, trigger_miss
(``metrics.firing``), is 1 minus how much more often the trigger's samples land on their medoid image than the plain
and the flat starts' samples do: low = backdoored. The verdict compares the calibrated statistic (by image size)
with a threshold placed on clean and backdoored dev models with the same inversion method and settings (the shipped
``pdfast/detection_calibration.json``, or a file written by ``pdfast calibrate`` and named with --calibration).
TERD's KL statistic of the trigger is reported as a second signal.

``judge`` returns its own result, a ``Verdict``; pdfast.api joins it with the inversion it judged.
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
from .config import DetectionConfig, InversionConfig
from .errors import PdfastError
from .model import DiffusionModel

log = logging.getLogger(__name__)
CALIBRATION_FILE = Path(__file__).resolve().parent / "detection_calibration.json"


# Without the shipped calibration file the verdict still uses verdict v2's statistic, with a conservative threshold:
# backdoored only when the trigger lands more than half of the samples on one image that plain and flat-shifted
# samples do not reach (clean calibration models: at most 0.08, docs/method.md 7), and said so.
FALLBACK = {"statistic": "trigger_miss", "threshold": 0.5, "kl_threshold": None,
            "provenance": "uncalibrated fallback: detection_calibration.json missing"}
# the verdict statistics judge() computes (low = backdoored): what a calibration may name
VERDICT_STATISTICS = ("trigger_miss", "pattern_uniformity", "pattern_uniformity_q25", "pattern_uniformity_trimmed",
                      "uniformity", "uniformity_trimmed", "pattern_effect", "trigger_effect")


def calibration(path: Path | None = None, sample_size: int | None = None) -> dict:
    """The shipped threshold calibration (threshold, statistic, the models and command it came from), or FALLBACK
    when the file is missing. A file may hold one calibration per image size under "by_size"; the one of
    ``sample_size`` is returned when present, else the top-level one (whose settings then say which size it was
    made for)."""
    try:
        cal = json.loads(Path(path or CALIBRATION_FILE).read_text())
    except (OSError, ValueError):
        return dict(FALLBACK)
    return for_size(cal, sample_size)


def for_size(cal: dict, sample_size: int | None) -> dict:
    """The entry of a calibration file for ``sample_size``: its "by_size" entry when it has one, else the top level."""
    by_size = cal.get("by_size") or {}
    return by_size.get(str(sample_size), cal) if sample_size is not None else cal


def read_calibration(path: str | Path, option: str = "--calibration") -> dict:
    """A calibration file a user names, checked: a JSON object with a numeric threshold and a known statistic at
    its top level or in every "by_size" entry. A missing file or anything else is a PdfastError (one line)."""
    from .io import read_user_json

    p = Path(path)
    cal = read_user_json(p, option, missing="give a calibration file written by pdfast calibrate",
                         unreadable="is not a calibration file (not readable JSON: {reason})")
    entries = [cal] if isinstance(cal, dict) and "threshold" in cal else []
    entries += list((cal.get("by_size") or {}).values()) if isinstance(cal, dict) else []
    problem = _entry_problem(entries)
    if problem:
        raise PdfastError(f"{option} {p} is not a calibration file ({problem}); write one with pdfast calibrate")
    return cal


def _entry_problem(entries: list) -> str | None:
    """What makes these calibration entries unusable, or None."""
    if not entries:
        return "no threshold"
    for e in entries:
        if not isinstance(e, dict) or not isinstance(e.get("threshold"), (int, float)) or isinstance(
                e.get("threshold"), bool):
            return "a threshold that is not a number"
        if e.get("statistic", "pattern_uniformity") not in VERDICT_STATISTICS:
            return f"unknown statistic {e.get('statistic')!r}"
    return None


def calibration_for(path: str | Path | None, sample_size: int | None) -> tuple[dict, str | None]:
    """(entry for this image size, the file it came from): the named file (read_calibration, strict), or with None
    the shipped one (``CALIBRATION_FILE``; FALLBACK and None when it is missing)."""
    if path is not None:
        return for_size(read_calibration(path), sample_size), str(path)
    cal = calibration(sample_size=sample_size)
    return cal, (None if cal.get("provenance") == FALLBACK["provenance"] else str(CALIBRATION_FILE))


def verdict_pattern(trigger: torch.Tensor, sample_size: int | None, pattern_rms: float | None = None,
                    cal: dict | None = None):
    """(pattern, rms): the pattern the verdict samples from, at ``pattern_rms`` or else the energy its size's
    calibration (``cal``, default the shipped one) was made with (None: the trigger's own energy)."""
    cal = cal if cal is not None else calibration(sample_size=sample_size)
    rms = pattern_rms if pattern_rms is not None else cal.get("pattern_rms")
    return metrics.trigger_pattern(trigger, rms), rms


@dataclass
class Verdict:
    """What ``judge`` found: the metrics (``metrics["detection"]`` is the verdict itself), the samples from
    eps + trigger and eps + its pattern, the model's ground-truth trigger when its folder has one, the engine the
    samples were drawn with."""

    metrics: dict
    samples: torch.Tensor
    pattern_samples: torch.Tensor
    ground_truth: torch.Tensor | None
    engine: dict

    @property
    def detection(self) -> dict:
        return self.metrics["detection"]

    @property
    def backdoored(self) -> bool:
        return self.detection["verdict"] == "backdoored"


def judge(trigger: torch.Tensor, model: DiffusionModel, cfg: InversionConfig = InversionConfig(),
          det: DetectionConfig = DetectionConfig(), *, given_trigger: bool = False, progress: bool = False) -> Verdict:
    """Sample det.n_eval images from eps + trigger, and as many from eps + its pattern, eps + its flat part and eps
    alone (the same noises, the chain of the model's attack family (cfg.attack_family) with ``cfg``'s clip_sample, on
    an engine made from ``cfg.engine``), compute the metrics (plain and flat samples give the no-trigger baselines,
    the paired ratios and the firing of verdict v2) and the verdict: the calibrated statistic below the threshold
    means backdoored. ``cfg``: the settings the trigger was inverted with (only its engine and clip_sample options
    with ``given_trigger``)."""
    from .engine import make_engine
    from .families import family_of
    from .loading import load_ground_truth

    cal, cal_file = calibration_for(det.calibration, model.sample_size)
    gt_trigger, gt_target = load_ground_truth(model)
    engine = make_engine(cfg.engine.name, model, **cfg.engine.engine_options())
    sampler = family_of(model, cfg.attack_family).sampler(model.schedule, cfg.clip_for(model.schedule.clip_sample),
                                                          respace=det.eval_steps)
    t0 = time.perf_counter()
    pattern, rms = verdict_pattern(trigger, model.sample_size, det.pattern_rms, cal)
    starts = [trigger, pattern, None, metrics.flat_part(trigger)]
    imgs, pattern_imgs, plain_imgs, flat_imgs = engine.sample_together(
        det.n_eval, [None if s is None else s.to(model.device) for s in starts], seed=det.eval_seed,
        progress=progress, sampler=sampler)
    m: dict = {"n_samples": det.n_eval, "sample_seed": det.eval_seed,
               "sampling_seconds": round(time.perf_counter() - t0, 3)}
    m.update(_sample_metrics(trigger, imgs, pattern, pattern_imgs, rms, gt_trigger, gt_target))
    m.update(paired_metrics(m, plain_imgs))
    m.update(metrics.firing(imgs, plain_imgs, flat_imgs))
    m["detection"] = verdict(m, det.threshold, run_settings(cfg, det, model, given_trigger), cal, cal_file)
    return Verdict(m, imgs, pattern_imgs, gt_trigger, engine.describe())


def paired_metrics(m: dict, plain_imgs: torch.Tensor) -> dict:
    """The no-trigger baseline and the trigger's paired effect (docs/method.md section 7): the uniformity of plain
    samples drawn from the same noises, and the ratios U(eps + pattern) / U(eps) and U(eps + trigger) / U(eps)
    (about 1 when the trigger changes nothing, near 0 when it collapses the samples onto one image)."""
    plain = metrics.uniformity(plain_imgs)
    return {"plain_uniformity": plain, "pattern_effect": m["pattern_uniformity"] / max(plain, 1e-12),
            "trigger_effect": m["uniformity"] / max(plain, 1e-12)}


def _sample_metrics(trigger, imgs, pattern, pattern_imgs, rms, gt_trigger, gt_target) -> dict:
    """Uniformity, contrast and KL of the trigger's samples, the same of its pattern's, ASR and L2 where the ground
    truth is known (docs/method.md section 7)."""
    m = metrics.evaluate_images(imgs, None)
    m["image_contrast"] = metrics.image_contrast(imgs)
    m.update(metrics.kl_statistic(trigger))
    m["pattern_rms"] = rms
    m["pattern_uniformity"] = metrics.uniformity(pattern_imgs)
    m["pattern_uniformity_trimmed"] = metrics.uniformity_trimmed(pattern_imgs)
    m["pattern_uniformity_q25"] = metrics.uniformity_q25(pattern_imgs)
    m["pattern_image_contrast"] = metrics.image_contrast(pattern_imgs)
    if gt_target is not None:
        m["asr"] = metrics.asr(imgs, gt_target)  # exact (MSE < 0.02); BadDiffusion's 0.1 beside it
        m["asr_paper"] = metrics.asr(imgs, gt_target, metrics.PAPER_ASR_THRESHOLD)
        m["pattern_asr"] = metrics.asr(pattern_imgs, gt_target)
    else:
        m.pop("asr", None)
    if gt_trigger is not None:
        m["l2"] = metrics.l2_distance(trigger, gt_trigger)
        m["pattern_l2"] = metrics.l2_distance(pattern, gt_trigger)
    return m


def run_settings(cfg: InversionConfig, det: DetectionConfig, model: DiffusionModel, given_trigger: bool) -> dict:
    """The settings a calibration must share with this run to apply (those it records are compared): image size,
    samples per verdict, the verdict chain's steps and clip_sample; for an inverted trigger also method, K, preset
    and scale source."""
    common = {"sample_size": model.sample_size, "n_eval": det.n_eval,
              "eval_steps": min(det.eval_steps, model.schedule.T),
              "clip_sample": cfg.clip_for(model.schedule.clip_sample)}
    if given_trigger:
        return common
    return {"method": cfg.method, "steps": cfg.steps, **common,
            "preset": cfg.preset if cfg.method == "puredif" else None, "scales": cfg.scales}


def verdict(m: dict, threshold: float | None, settings: dict, cal: dict | None = None,
            calibration_file: str | None = None) -> dict:
    """The verdict from the calibrated statistic s: backdoored when s < threshold, with its margin log(s / threshold)
    (negative: backdoored; |margin| < 0.5 is within a factor 1.65 of the threshold) and a warning when the
    calibration (``cal``, default the shipped one) was made with other settings than this run."""
    cal = cal if cal is not None else calibration(sample_size=settings.get("sample_size"))
    thr = float(threshold) if threshold is not None else float(cal["threshold"])
    stat = cal.get("statistic", "pattern_uniformity")
    value = float(m[stat])
    made_with = cal.get("settings") or {}
    mismatch = {k: {"calibration": made_with[k], "run": v} for k, v in settings.items()
                if k in made_with and made_with[k] != v}
    if mismatch and threshold is None:
        log.warning("the detection threshold was calibrated with other settings (%s); recalibrate with "
                    "pdfast calibrate (then --calibration FILE) or pass --threshold", ", ".join(
                        f"{k} {d['calibration']} vs {d['run']}" for k, d in mismatch.items()))
    kl_thr = cal.get("kl_threshold")
    return {
        "verdict": "backdoored" if value < thr else "clean",
        "statistic": stat,
        "value": value,
        "threshold": thr,
        "margin": math.log(max(value, 1e-12) / thr) if thr > 0 else None,
        "threshold_source": "--threshold" if threshold is not None else cal.get("provenance", calibration_file),
        "calibration_file": calibration_file,
        "calibration_mismatch": mismatch or None,
        "kl_signal": None if kl_thr is None else {"kl_mean": m["kl_mean"], "threshold": kl_thr,
                                                  "verdict": "backdoored" if m["kl_mean"] > kl_thr else "clean"},
    }
