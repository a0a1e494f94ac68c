"""The engine interface and the registry of engines."""
from __future__ import annotations

from typing import Protocol, Sequence

import torch

from ..model import DiffusionModel


class Engine(Protocol):
    """Executes and differentiates the chain of pdfast.chain: x_0 = noise + delta, x_{i+1} = sampler.step(...).

    loss_and_grad returns total(mean_{i in S} L_i, delta) and its gradient with respect to delta, where
    L_i = objective.term(eps_theta(x_i, t_i), delta, objective.params(i)) (pdfast.objectives).
    """

    name: str
    model: DiffusionModel

    def loss_and_grad(self, delta: torch.Tensor, noise: torch.Tensor, zs: Sequence[torch.Tensor | None], sampler,
                      objective, loss_steps: Sequence[int]) -> tuple[float, torch.Tensor]:
        """Loss (float) and its gradient with respect to delta (same shape as delta)."""
        ...

    def sample(self, n: int, trigger: torch.Tensor | None = None, seed: int = 0, batch: int = 64,
               progress: bool = False) -> torch.Tensor:
        """n images of the full DDPM chain from eps + trigger, in [-1, 1], on CPU."""
        ...


ENGINE_NAMES = ("fast", "reference")
