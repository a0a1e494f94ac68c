"""Sampling: the full DDPM ancestral chain (plain torch, no grad), optionally from eps + trigger.

This is the reference sampler; the fast engine provides a compiled/bf16 one with the same signature.
"""
from __future__ import annotations

from typing import Callable

import torch

from .model import DiffusionModel


@torch.no_grad()
def sample(model: DiffusionModel, n: int = 16, *, trigger: torch.Tensor | None = None, seed: int = 0,
           batch: int = 64, steps: int | None = None, device: str | torch.device | None = None,
           progress: bool = False, callback: Callable[[int], None] | None = None) -> torch.Tensor:
    """n images from the DDPM chain x_T = eps + trigger, x_{t-1} = c1 (x_t - c2 eps_theta) + sigma z; in [-1, 1]."""
    from tqdm.auto import tqdm

    device = torch.device(device) if device is not None else model.device
    gen = torch.Generator(device="cpu").manual_seed(seed)
    ts = model.schedule.timesteps(steps) if steps else model.schedule.timesteps()
    out = []
    for start in range(0, n, batch):
        b = min(batch, n - start)
        x = torch.randn((b, *model.shape), generator=gen).to(device)
        if trigger is not None:
            x = x + trigger.to(device, x.dtype).reshape(1, *model.shape)
        bar = tqdm(ts, desc=f"sample {start + b}/{n}", disable=not progress, mininterval=1.0, leave=False)
        for t in bar:
            eps = model.eps(x, torch.tensor(t, device=device))
            z = torch.randn(x.shape, generator=gen).to(device) if t > 0 else None
            x = model.schedule.step(x, eps.to(x.dtype), t, z)
            if callback is not None:
                callback(t)
        out.append(x.clamp(-1, 1).cpu())
    return torch.cat(out)


@torch.no_grad()
def ddim_sample(model: DiffusionModel, n: int, *, steps: int = 100, seed: int = 0, batch: int = 64,
                device: str | torch.device | None = None) -> torch.Tensor:
    """n images with deterministic DDIM (eta = 0) on ``steps`` evenly spaced timesteps: a cheap image pool.

    x0_hat = (x_t - sqrt(1-abar_t) eps)/sqrt(abar_t); x_s = sqrt(abar_s) x0_hat + sqrt(1-abar_s) eps.
    """
    device = torch.device(device) if device is not None else model.device
    gen = torch.Generator(device="cpu").manual_seed(seed)
    T = model.schedule.T
    ts = torch.linspace(T - 1, 0, steps).round().long().tolist()
    ab = model.schedule.abar.to(torch.float32)
    out = []
    for start in range(0, n, batch):
        b = min(batch, n - start)
        x = torch.randn((b, *model.shape), generator=gen).to(device)
        for i, t in enumerate(ts):
            eps = model.eps(x, torch.tensor(t, device=device))
            x0 = ((x - (1 - ab[t]).sqrt() * eps) / ab[t].sqrt()).clamp(-1, 1)
            if i + 1 < len(ts):
                s = ts[i + 1]
                x = ab[s].sqrt() * x0 + (1 - ab[s]).sqrt() * eps
            else:
                x = x0
        out.append(x.cpu())
    return torch.cat(out)
