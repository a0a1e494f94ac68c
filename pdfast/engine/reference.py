"""The reference engine: eager fp32, full autograd graph down the chain (what research code does).

It is the specification every fast path is tested against. Memory grows with the number of steps.
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..model import DiffusionModel
from .base import register, shift_loss_torch


def chain_loss(model: DiffusionModel, delta: torch.Tensor, noise: torch.Tensor, zs: Sequence[torch.Tensor | None],
               timesteps: Sequence[int], lambdas: Sequence[float], loss_steps: Sequence[int], norm: str) -> torch.Tensor:
    """Differentiable loss of one iteration: chain from x_T = noise + delta through timesteps[0..max(loss_steps)]."""
    last = max(loss_steps)
    wanted = set(loss_steps)
    x = noise + delta.reshape(1, *noise.shape[1:])
    total = x.new_zeros(())
    for i in range(last + 1):
        t = timesteps[i]
        eps = model.eps(x, torch.tensor(t, device=x.device))
        if i in wanted:
            total = total + shift_loss_torch(eps, delta, float(lambdas[i]), norm)
        if i < last:
            x = model.schedule.step(x, eps, t, zs[i])
    return total / len(wanted)


@register("reference")
class ReferenceEngine:
    """Plain eager fp32 autograd; ``sample`` is pdfast.sampling.sample."""

    name = "reference"

    def __init__(self, model: DiffusionModel, **_ignored):
        self.model = model

    def loss_and_grad(self, delta, noise, zs, timesteps, lambdas, loss_steps, norm):
        d = delta.detach().clone().requires_grad_(True)
        loss = chain_loss(self.model, d, noise, zs, timesteps, lambdas, loss_steps, norm)
        (grad,) = torch.autograd.grad(loss, d)
        return float(loss.detach()), grad

    def sample(self, n, trigger=None, seed=0, batch=64, progress=False):
        from ..sampling import sample

        return sample(self.model, n, trigger=trigger, seed=seed, batch=batch, device=self.model.device, progress=progress)

    def describe(self) -> dict:
        return {"engine": self.name, "dtype": "float32", "checkpointing": False, "compiled": False}
