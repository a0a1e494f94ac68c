"""The reference engine: eager fp32, full autograd graph down the chain (what research code does).

It is the specification every fast path is tested against. Memory grows with the number of steps.
"""
from __future__ import annotations

from typing import Sequence

import torch

from .. import chain
from ..errors import PdfastError
from ..model import DiffusionModel
from .base import ChainSampling


def chain_loss(model: DiffusionModel, delta: torch.Tensor, noise: torch.Tensor, zs: Sequence[torch.Tensor | None],
               sampler, objective, loss_steps: Sequence[int]) -> torch.Tensor:
    """Differentiable objective of one iteration: total(mean_{i in S} L_i, delta), the chain run from
    x_0 = noise + delta through step max(S)."""
    wanted = set(int(i) for i in loss_steps)
    terms: list[torch.Tensor] = []

    def on_step(i, x, eps):
        if i in wanted:
            terms.append(objective.term(eps, delta, objective.params(i)))

    x0 = noise + delta.reshape(1, *noise.shape[1:])
    chain.run(model.eps, x0, sampler, chain.ReplayNoise(noise, zs), n=max(wanted) + 1, update_last=False,
              callback=on_step)
    return objective.total(sum(terms) / len(wanted), delta)


class ReferenceEngine(ChainSampling):
    """Plain eager fp32 autograd; sampling is pdfast.chain's with the model as is."""

    name = "reference"

    def __init__(self, model: DiffusionModel, **options):
        if options:
            raise PdfastError(f"the reference engine takes no options (got {', '.join(sorted(options))}); "
                              "use --engine fast for dtype, compile, memory budget or CUDA graphs")
        self.model = model

    def loss_and_grad(self, delta, noise, zs, sampler, objective, loss_steps):
        d = delta.detach().clone().requires_grad_(True)
        loss = chain_loss(self.model, d, noise, zs, sampler, objective, loss_steps)
        (grad,) = torch.autograd.grad(loss, d)
        return float(loss.detach()), grad

    def eps_nograd(self, x, t):
        return self.model.eps(x, t)

    def describe(self) -> dict:
        return {"engine": self.name, "dtype": "float32", "checkpointing": False, "compiled": False}
