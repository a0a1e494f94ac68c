"""pdfast's poisoned-pair search (docs/method.md 5.11; pdfast's, in no paper): the trigger g and target y that the
suspect network answers the way a backdoor of its family was trained to.

A VillanDiffusion backdoor with the trigger-only residual (r = g; BadDiffusion's r = g form is its psi = 1, sde case)
is trained on closed-form pairs (section 2b): the input x_t = sqrt(abar_t) y + sqrt(1 - abar_t) eps + rho_hat_t g and
the regression target eps + c_t g. The search minimises, by Adam on g and y together (both kept in [-1, 1]),

  R(g, y) = mean_b || eps_theta(x_t_b(y, eps_b, g), t_b) - eps_b - c_t_b g ||^2 / mean_b || c_t_b g ||^2

with t_b drawn from [PAIR_T_LO T, PAIR_T_HI T) for each sample and fresh noise each step. Each sample's own eps is
known, so R needs no batch mean; no chain is walked, so no backward pass runs through more than one network call.
Mid-chain t is where the backdoor's answer is its own: near t = T any model answers a shift delta with about delta
(x_T is nearly eps + delta), and near t = 0 the trigger's weight rho_hat_t vanishes. Its triggers join the firing
selection only below PAIR_R_MAX on a fixed batch (pair_score).
"""
from __future__ import annotations

import torch

from .errors import PdfastError
from .model import DiffusionModel

PAIR_T_LO, PAIR_T_HI = 0.12, 0.6  # the search's t range, as fractions of the schedule's T
PAIR_BATCH = 32                   # noises per Adam step, each at its own timestep
PAIR_LR = 0.05
# A pair search's trigger joins the firing selection only when its pair_score is below PAIR_R_MAX: on a clean model
# fine-tuned on two photographs the search steers the deterministic ODE chain onto one of them from a trigger the
# network does not answer as a backdoor (R 0.04-0.06). The geometric mean of the dev backdoor's 0.0040 and its clean
# base's lowest 0.0594 (research/results/pair-probe.md, docs/method.md 5.11).
PAIR_R_MAX = 0.0154
PAIR_EVAL_N, PAIR_EVAL_SEED = 64, 0


def pair_coefficients(family, schedule) -> tuple[torch.Tensor, torch.Tensor]:
    """(rho_hat_t, c_t) of ``family``'s poisoned pair, float32 per t; a PdfastError for a family without a closed
    form that needs only g and y (TrojDiff; the pasted residual, whose r holds the clean training image)."""
    from .schedule import villan_coefficients

    if family.name == "trojdiff" or family.residual != "trigger_only":
        raise PdfastError(f"--pair-epochs needs a trigger-only VillanDiffusion or BadDiffusion family (got "
                          f"{family.describe()}, residual {family.residual}); use --pair-epochs 0, or "
                          "--attack-family with residual=trigger_only")
    psi = family.psi if family.name == "villandiffusion" else 1.0
    rho_hat, c = villan_coefficients(schedule, psi, family.solver)
    return rho_hat.to(torch.float32), c.to(torch.float32)


def pair_residual(model: DiffusionModel, g: torch.Tensor, y: torch.Tensor, eps: torch.Tensor, t: torch.Tensor,
                  rho_hat: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """R(g, y) on the noise batch ``eps`` (B, C, H, W), sample b at timestep t[b], in one network call:
    mean_b || eps_theta(sqrt(abar_t) y + sqrt(1 - abar_t) eps_b + rho_hat_t g, t) - eps_b - c_t g ||^2 over
    mean_b || c_t g ||^2."""
    ab = model.schedule.abar.to(torch.float32)[t].view(-1, 1, 1, 1).to(eps.device)
    rho, coef = (v[t].view(-1, 1, 1, 1).to(eps.device) for v in (rho_hat, c))
    x = ab.sqrt() * y + (1 - ab).sqrt() * eps + rho * g
    shift = coef * g
    r = model.eps(x, t.to(eps.device)) - eps - shift
    return r.pow(2).mean() / shift.pow(2).mean().clamp_min(1e-8)


def pair_score(model: DiffusionModel, family, g: torch.Tensor, y: torch.Tensor) -> float:
    """R(g, y) on one fixed batch: PAIR_EVAL_N noises (seed PAIR_EVAL_SEED), sample b at the b-th of PAIR_EVAL_N
    evenly spaced t in the search's range; the same number for every candidate and every run."""
    T = model.schedule.T
    t = torch.linspace(PAIR_T_LO * T, PAIR_T_HI * T - 1, PAIR_EVAL_N).round().long()
    eps = torch.randn((PAIR_EVAL_N, *model.shape), generator=torch.Generator().manual_seed(PAIR_EVAL_SEED))
    rho_hat, c = pair_coefficients(family, model.schedule)
    dev = model.device
    with torch.no_grad():
        return float(pair_residual(model, g.reshape(1, *model.shape).to(dev), y.reshape(1, *model.shape).to(dev),
                                   eps.to(dev), t, rho_hat, c))


def pair_search(model: DiffusionModel, family, start: torch.Tensor, epochs: int, gen: torch.Generator,
                device) -> tuple[torch.Tensor, torch.Tensor, float]:
    """``epochs`` Adam steps on R(g, y) from g = ``start`` and y = 0 (a grey frame); returns (g, y, R at the
    last step). The network must be frozen (pdfast.inversion.prepared)."""
    rho_hat, c = pair_coefficients(family, model.schedule)
    T = model.schedule.T
    lo, hi = max(1, int(PAIR_T_LO * T)), max(2, int(PAIR_T_HI * T))
    g = start.detach().to(device, torch.float32).reshape(1, *model.shape).clamp(-1, 1).requires_grad_(True)
    y = torch.zeros_like(g, requires_grad=True)
    opt = torch.optim.Adam([g, y], lr=PAIR_LR)
    loss = torch.tensor(float("nan"))
    for _ in range(epochs):
        t = torch.randint(lo, hi, (PAIR_BATCH,), generator=gen)
        eps = torch.randn((PAIR_BATCH, *model.shape), generator=gen).to(device)
        loss = pair_residual(model, g, y, eps, t, rho_hat, c)
        if not torch.isfinite(loss):
            raise PdfastError(f"the pair search diverged (loss {float(loss.detach())}); use --pair-epochs 0")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            g.clamp_(-1, 1)
            y.clamp_(-1, 1)
    return g.detach(), y.detach(), float(loss.detach())
