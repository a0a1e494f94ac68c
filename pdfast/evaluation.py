"""Evaluate a trigger on a model: sample from eps + trigger and compute the METHOD.md section 7 metrics."""
from __future__ import annotations

import time
from pathlib import Path

import torch

from . import metrics
from .model import DiffusionModel


def evaluate_trigger(model: DiffusionModel, trigger: torch.Tensor | None, *, target: torch.Tensor | None = None,
                     n: int = 16, threshold: float = metrics.DEFAULT_ASR_THRESHOLD, clean: bool = True, seed: int = 0,
                     device=None, progress: bool = False, out: str | Path | None = None,
                     sampler=None) -> dict:
    """Uniformity, ASR (target known), L2 and KL of ``trigger``; with ``clean`` also the uniformity from plain noise.

    The ground truth of a backdoored model folder fills in a missing target and gives the L2 distance.
    """
    from .attack import load_ground_truth
    from .io import atomic_write_json, save_png
    from .sampling import sample

    sampler = sampler or sample
    gt_trigger, gt_target = load_ground_truth(model)
    if target is None:
        target = gt_target
    t0 = time.perf_counter()
    imgs = sampler(model, n, trigger=trigger, seed=seed, device=device, progress=progress)
    rep: dict = {"n": n, "seed": seed, "asr_threshold": threshold}
    rep.update(metrics.evaluate_images(imgs, target, threshold))
    rep["l2"] = metrics.l2_distance(trigger, gt_trigger) if (trigger is not None and gt_trigger is not None) else None
    if trigger is not None:
        rep.update(metrics.kl_statistic(trigger))
    if clean:
        clean_imgs = sampler(model, n, trigger=None, seed=seed + 1, device=device, progress=progress)
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
