"""The engine interface and the registry of engines."""
from __future__ import annotations

from typing import Callable, Protocol, Sequence

import torch

from ..errors import PdfastError
from ..model import DiffusionModel


class Engine(Protocol):
    """Runs the chain x_T = noise + delta, x_{t-1} = step(x_t, eps_theta(x_t, t), z_t) and the shift loss.

    loss = (1/|S|) sum_{i in S} || mean_b eps_theta(x_{t_i}, t_i) - lambda_i delta ||  (S = loss_steps)
    """

    name: str
    model: DiffusionModel

    def loss_and_grad(self, delta: torch.Tensor, noise: torch.Tensor, zs: Sequence[torch.Tensor | None],
                      timesteps: Sequence[int], lambdas: Sequence[float], loss_steps: Sequence[int],
                      norm: str) -> tuple[float, torch.Tensor]:
        """Loss (float) and its gradient with respect to delta (same shape as delta)."""
        ...

    def sample(self, n: int, trigger: torch.Tensor | None = None, seed: int = 0, batch: int = 64,
               progress: bool = False) -> torch.Tensor:
        """n images of the full DDPM chain from eps + trigger, in [-1, 1], on CPU."""
        ...


ENGINES: dict[str, Callable[..., Engine]] = {}


def register(name: str):
    def deco(cls):
        ENGINES[name] = cls
        return cls
    return deco


def make_engine(name: str, model: DiffusionModel, **options) -> Engine:
    """An engine by name ('reference' or 'fast') for a frozen model."""
    from . import reference  # noqa: F401  (registers)

    if name == "fast":
        from . import fast  # noqa: F401
    if name not in ENGINES:
        raise PdfastError(f"unknown engine '{name}'; use one of: reference, fast")
    return ENGINES[name](model, **options)


def shift_loss_torch(eps: torch.Tensor, delta: torch.Tensor, lam: float, norm: str) -> torch.Tensor:
    """|| mean_b eps - lam * delta || as a mean over elements: L1 mean|d|, L2 mean d^2 (eq. 16-17)."""
    d = eps.float().mean(0) - lam * delta.float().reshape(eps.shape[1:])
    if norm == "l1":
        return d.abs().mean()
    if norm == "l2":
        return (d * d).mean()
    raise PdfastError(f"unknown norm '{norm}'; use l1 or l2")
