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
               progress: bool = False, steps: int | None = None, *, sampler=None) -> torch.Tensor:
        """n images of the chain from eps + trigger, in [-1, 1], on CPU: ``sampler`` (pdfast.chain), by default the
        DDPM chain over all T steps (or the first ``steps``) with the scheduler config's clip_sample."""
        ...

    def sample_together(self, n: int, triggers, seed: int = 0, batch: int = 64, progress: bool = False,
                        steps: int | None = None, *, sampler=None) -> list[torch.Tensor]:
        """``sample`` for several triggers from the same noise, in one chain."""
        ...


ENGINE_NAMES = ("fast", "reference")


class ChainSampling:
    """``sample`` and ``sample_together`` for an engine: pdfast.chain's DDPM sampling with the engine's own no-grad
    network call, the method ``eps_nograd(x, t)`` every engine defines (eager, or compiled, bf16 and CUDA-graphed in
    the fast engine)."""

    model: DiffusionModel

    def sample(self, n: int, trigger: torch.Tensor | None = None, seed: int = 0, batch: int = 64,
               progress: bool = False, steps: int | None = None, *, sampler=None) -> torch.Tensor:
        """n images of the chain x_T = eps + trigger (``sampler``, default DDPM), in [-1, 1], on CPU."""
        return self.sample_together(n, [trigger], seed=seed, batch=batch, progress=progress, steps=steps,
                                    sampler=sampler)[0]

    def sample_together(self, n: int, triggers, seed: int = 0, batch: int = 64, progress: bool = False,
                        steps: int | None = None, *, sampler=None) -> list[torch.Tensor]:
        """n images for each trigger from the same noise, in one chain (pdfast.chain.sample_together); ``sampler``
        None: DDPMSampler(schedule, steps) with the scheduler config's clip_sample."""
        from ..chain import DDPMSampler, sample_together

        sampler = sampler if sampler is not None else DDPMSampler(self.model.schedule, steps)
        return sample_together(self.eps_nograd, sampler, self.model.shape, n, triggers, seed=seed, batch=batch,
                               device=self.model.device, progress=progress)
