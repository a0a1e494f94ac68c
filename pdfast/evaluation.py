"""Evaluate a trigger on a model: sample from eps + trigger and compute the metrics of docs/method.md section 7.

It samples through an engine's ``sample`` (pdfast.chain.sample), the same path the verdict of pdfast.detection uses.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from . import metrics
from .model import DiffusionModel


def evaluate_trigger(model: DiffusionModel, trigger: torch.Tensor | None, *, target: torch.Tensor | None = None,
                     n: int = 16, threshold: float = metrics.DEFAULT_ASR_THRESHOLD, clean: bool = True, seed: int = 0,
                     progress: bool = False, out: str | Path | None = None, engine=None, family=None) -> dict:
    """Uniformity, ASR (target known), L2 and KL of ``trigger``; with ``clean`` also the uniformity from plain noise;
    both sampled with the sampler of the model's attack family (``family``: a spec, None/auto: backdoor.json's).

    The ground truth of a backdoored model folder fills in a missing target and gives the L2 distance.
    """
    from .loading import load_ground_truth
    from .io import atomic_write_json, save_png
    from .engine import make_engine

    from .families import family_of
    from .sampling import family_trigger_image

    engine = engine or make_engine("fast", model)
    fam = family_of(model, family)
    sampler = fam.sampler(model.schedule, model.schedule.clip_sample, trigger_image=family_trigger_image(model, fam))
    gt_trigger, gt_target = load_ground_truth(model)
    if target is None:
        target = gt_target
    t0 = time.perf_counter()
    imgs = engine.sample(n, trigger=trigger, seed=seed, progress=progress, sampler=sampler)
    rep: dict = {"n": n, "seed": seed, "asr_threshold": threshold, "family": fam.describe()}
    rep.update(metrics.evaluate_images(imgs, target, threshold))
    rep["l2"] = metrics.l2_distance(trigger, gt_trigger) if (trigger is not None and gt_trigger is not None) else None
    if trigger is not None:
        rep.update(metrics.kl_statistic(trigger))
    if clean:
        clean_imgs = engine.sample(n, trigger=None, seed=seed + 1, progress=progress, sampler=sampler)
        rep["clean_uniformity"] = metrics.uniformity(clean_imgs)
        rep["clean_asr"] = metrics.asr(clean_imgs, target, threshold) if target is not None else None
        rep["uniformity_ratio_clean_over_triggered"] = rep["clean_uniformity"] / max(rep["uniformity"], 1e-12)
    rep["seconds"] = round(time.perf_counter() - t0, 2)
    if out is not None:
        out = Path(out)
        save_png(out / "samples.png", imgs)
        if clean:
            save_png(out / "clean_samples.png", clean_imgs)
        atomic_write_json(out / "metrics.json", rep)
    return rep
