"""Inversion objectives as per-step loss terms (docs/method.md sections 4 and 5).

An objective says what each chain step i in the loss set S contributes, L_i = term(eps_i, delta, params(i)), and how
the mean of those terms becomes the number Adam minimises, total(mean_S L_i, delta). Engines differentiate any
objective with autograd (the fast engine through its checkpointed chain), so a new objective is a few lines here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import torch

from .errors import PdfastError

NORMS = ("l1", "l2")


class Objective(Protocol):
    def params(self, i: int) -> tuple[float, ...]:
        """Per-step constants of term i (a CUDA graph copies them into a static row)."""
        ...

    def term(self, eps: torch.Tensor, delta: torch.Tensor, params) -> torch.Tensor:
        """L_i from the network output eps_i (B, C, H, W) and the trigger delta; params as floats or a tensor."""
        ...

    def total(self, mean_term: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """The objective from the mean of the terms over the loss steps."""
        ...


def shift_term(eps: torch.Tensor, delta: torch.Tensor, lam, norm: str) -> torch.Tensor:
    """|| mean_b eps - lam delta || as a mean over elements: L1 mean |r|, L2 mean r^2 (eq. 16-17).

    A float lam runs the fused ``shift_loss`` op; a tensor lam (a row of the fast engine's CUDA graph) its row form
    ``shift_loss_row``, which reads lam on the device (Triton where the kernel backend is Triton, else torch).
    """
    if norm not in NORMS:
        raise PdfastError(f"unknown norm '{norm}'; use l1 or l2")
    from .kernels import shift_loss, shift_loss_row

    if torch.is_tensor(lam):
        return shift_loss_row(eps, delta, lam, norm)
    return shift_loss(eps, delta, float(lam), norm)


def trigger_size(delta: torch.Tensor, norm: str) -> torch.Tensor:
    """n(delta) = mean |delta| (l1) or mean delta^2 (l2), floored at 1e-8."""
    d = delta.float()
    return (d.abs().mean() if norm == "l1" else d.pow(2).mean()).clamp_min(1e-8)


@dataclass(frozen=True)
class ShiftObjective:
    """PureDiffusion's eq. 17 (and Elijah's loss with lambda = 0.5 at t = T):
    L(delta) = mean_{i in S} || mean_b eps_theta(x_i(delta), t_i) - lambda_i delta ||;
    ``relative``: L(delta) / n(delta), so shrinking delta to 0 cannot win (pdfast's addition)."""

    lambdas: Sequence[float]
    norm: str = "l1"
    relative: bool = False

    def __post_init__(self):
        if self.norm not in NORMS:
            raise PdfastError(f"unknown norm '{self.norm}'; use l1 or l2")

    def params(self, i: int) -> tuple[float, ...]:
        return (float(self.lambdas[i]),)

    def term(self, eps, delta, params) -> torch.Tensor:
        return shift_term(eps, delta, params[0], self.norm)

    def total(self, mean_term, delta) -> torch.Tensor:
        return mean_term / trigger_size(delta, self.norm) if self.relative else mean_term

    def total_and_grad(self, mean_term: float, grad_mean: torch.Tensor, delta: torch.Tensor):
        """``chain_rule`` in closed form (the quotient rule d(M/n) = dM/n - M dn/n^2): the arithmetic of pdfast's
        recorded runs. Autograd's version differs in the last bit, and 60 Adam steps through the chain amplify
        that to a different trigger (0.31 max abs on the demo, measured), so the golden results need this form;
        tests check it against autograd."""
        if not self.relative:
            return float(mean_term), grad_mean
        d = delta.reshape(grad_mean.shape).to(grad_mean.dtype)
        n = trigger_size(d, self.norm)
        dn = d.sign() / d.numel() if self.norm == "l1" else 2 * d / d.numel()
        return mean_term / float(n), grad_mean / n - (mean_term / n ** 2) * dn


def chain_rule(objective: Objective, mean_term: float, grad_mean: torch.Tensor,
               delta: torch.Tensor) -> tuple[float, torch.Tensor]:
    """Value and gradient of total(M(delta), delta) from M and dM/d delta (an engine's checkpointed result):
    d total/d delta = (d total/d M) dM/d delta + (partial total/partial delta), by autograd on the small graph,
    or by the objective's own closed form (``total_and_grad``) where it has one."""
    if hasattr(objective, "total_and_grad"):
        return objective.total_and_grad(float(mean_term), grad_mean, delta)
    return autograd_chain_rule(objective, mean_term, grad_mean, delta)


def autograd_chain_rule(objective: Objective, mean_term: float, grad_mean: torch.Tensor,
                        delta: torch.Tensor) -> tuple[float, torch.Tensor]:
    """chain_rule by autograd alone: what any objective without a closed form gets."""
    m = torch.tensor(float(mean_term), dtype=torch.float32, requires_grad=True)
    d = delta.detach().to(grad_mean.device, torch.float32).reshape(grad_mean.shape).requires_grad_(True)
    with torch.enable_grad():
        f = objective.total(m, d)
        if not f.requires_grad:
            return float(f), grad_mean
        g_m, g_d = torch.autograd.grad(f, [m, d], allow_unused=True)
    grad = grad_mean * (g_m if g_m is not None else 0.0)
    if g_d is not None:
        grad = grad + g_d
    return float(f.detach()), grad
