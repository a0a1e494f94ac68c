"""Sampling a model as it is (plain torch, no grad): the DDPM chain, optionally from eps + trigger, and DDIM.

Both are pdfast.chain.sample with the model's own network call; an engine's ``sample`` is the same chain with the
engine's (compiled, bf16, graphed) network call.
"""
from __future__ import annotations

from typing import Callable

import torch

from . import chain
from .model import DiffusionModel


def sample(model: DiffusionModel, n: int = 16, *, trigger: torch.Tensor | None = None, seed: int = 0,
           batch: int = 64, steps: int | None = None, device: str | torch.device | None = None,
           progress: bool = False, callback: Callable[[int], None] | None = None, family=None) -> torch.Tensor:
    """n images from the chain of the model's attack family (``family``: a spec or AttackFamily, None/auto: the
    model's backdoor.json, else BadDiffusion's DDPM chain x_T = eps + trigger, x_{t-1} = c1 (x_t - c2 eps_theta) +
    sigma z); in [-1, 1]. ``callback(t)`` is called after every step."""
    from .families import family_of

    fam = family_of(model, family)
    sampler = fam.sampler(model.schedule, model.schedule.clip_sample, steps,
                          trigger_image=family_trigger_image(model, fam))
    on_step = None if callback is None else (lambda i, x, eps: callback(sampler.timesteps[i]))
    device = torch.device(device) if device is not None else model.device
    return chain.sample(model.eps, sampler, model.shape, n, trigger=trigger, seed=seed, batch=batch, device=device,
                        progress=progress, callback=on_step)


def family_trigger_image(model: DiffusionModel, family):
    """The ground-truth trigger image of a TrojDiff patch model (its region), else None."""
    from .loading import load_trigger_image

    return load_trigger_image(model) if family.name == "trojdiff" and family.trigger_type == "patch" else None


def ddim_sample(model: DiffusionModel, n: int, *, steps: int = 100, seed: int = 0, batch: int = 64,
                device: str | torch.device | None = None) -> torch.Tensor:
    """n images with deterministic DDIM (eta = 0) on ``steps`` evenly spaced timesteps: a cheap image pool."""
    device = torch.device(device) if device is not None else model.device
    return chain.sample(model.eps, chain.DDIMSampler(model.schedule, steps), model.shape, n, seed=seed, batch=batch,
                        device=device)
