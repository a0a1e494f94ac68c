"""DDPM schedule math: betas, the posterior coefficients of the ancestral step and the trigger-shift scales.

The schedule holds numbers only (docs/method.md sections 1 and 3): the samplers of pdfast.chain own the step that
uses them (and the clip_sample of a run), the kernels its fused form.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

import torch

from .errors import PdfastError

SUPPORTED_VARIANCE = ("fixed_small", "fixed_small_log", "fixed_large")
DEFAULT_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 1e-4,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "variance_type": "fixed_small",
    "clip_sample": True,
    "clip_sample_range": 1.0,
    "prediction_type": "epsilon",
}


def _cosine_betas(n: int, max_beta: float = 0.999) -> torch.Tensor:
    """squaredcos_cap_v2 (Nichol & Dhariwal): beta_t = 1 - abar(t+1)/abar(t), abar(s) = cos^2((s/n + 0.008)/1.008 pi/2)."""
    def abar(s: float) -> float:
        return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

    return torch.tensor([min(1 - abar((i + 1) / n) / abar(i / n), max_beta) for i in range(n)], dtype=torch.float64)


@dataclass(frozen=True)
class Schedule:
    """A DDPM noise schedule (float64 on CPU) and the sampler options read from a scheduler config (clip_sample is
    the config's default; a sampler may be given another, pdfast.chain.DDPMSampler)."""

    betas: torch.Tensor
    variance_type: str = "fixed_small"
    clip_sample: bool = False
    clip_sample_range: float = 1.0
    config: dict = field(default_factory=dict, compare=False)

    def __post_init__(self):
        if self.variance_type not in SUPPORTED_VARIANCE:
            raise PdfastError(
                f"variance_type '{self.variance_type}' is not supported; use one of {', '.join(SUPPORTED_VARIANCE)} "
                "in the scheduler config"
            )

    # ---------- construction ----------
    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None = None) -> "Schedule":
        """Build from a diffusers DDPMScheduler config dict (missing keys take the DDPM defaults)."""
        cfg = dict(DEFAULT_CONFIG)
        if config:
            cfg.update({k: v for k, v in config.items() if not k.startswith("_")})
        if cfg.get("prediction_type", "epsilon") != "epsilon":
            raise PdfastError(
                f"prediction_type '{cfg['prediction_type']}' is not supported; pdfast needs an epsilon-predicting model"
            )
        if cfg.get("thresholding"):
            raise PdfastError("dynamic thresholding is not supported; set thresholding to false in the scheduler config")
        n = int(cfg["num_train_timesteps"])
        if n < 2:
            raise PdfastError(f"num_train_timesteps must be at least 2, got {n}")
        kind = cfg["beta_schedule"]
        if cfg.get("trained_betas") is not None:
            betas = torch.tensor(cfg["trained_betas"], dtype=torch.float64)
        elif kind == "linear":
            betas = torch.linspace(cfg["beta_start"], cfg["beta_end"], n, dtype=torch.float64)
        elif kind == "scaled_linear":
            betas = torch.linspace(cfg["beta_start"] ** 0.5, cfg["beta_end"] ** 0.5, n, dtype=torch.float64) ** 2
        elif kind == "squaredcos_cap_v2":
            betas = _cosine_betas(n)
        else:
            raise PdfastError(
                f"beta_schedule '{kind}' is not supported; use linear, scaled_linear or squaredcos_cap_v2"
            )
        return cls(
            betas=betas,
            variance_type=str(cfg.get("variance_type", "fixed_small")),
            clip_sample=bool(cfg.get("clip_sample", True)),
            clip_sample_range=float(cfg.get("clip_sample_range", 1.0)),
            config=cfg,
        )

    @classmethod
    def default(cls, *, warn: bool = True, **overrides) -> "Schedule":
        """The DDPM paper's linear schedule (1e-4 to 0.02, T = 1000)."""
        if warn:
            warnings.warn("no scheduler config found: using the DDPM default linear schedule (1e-4..0.02, T=1000)")
        return cls.from_config({**DEFAULT_CONFIG, **overrides})

    def to_config(self) -> dict:
        """A diffusers DDPMScheduler config reproducing this schedule."""
        cfg = dict(DEFAULT_CONFIG)
        cfg.update(self.config)
        cfg.update(variance_type=self.variance_type, clip_sample=self.clip_sample,
                   clip_sample_range=self.clip_sample_range, num_train_timesteps=self.T)
        cfg["_class_name"] = "DDPMScheduler"
        return cfg

    # ---------- derived quantities ----------
    @property
    def T(self) -> int:
        return int(self.betas.shape[0])

    @property
    def alphas(self) -> torch.Tensor:
        return 1.0 - self.betas

    @property
    def abar(self) -> torch.Tensor:
        """abar_t = prod_{s<=t} alpha_s."""
        return torch.cumprod(self.alphas, 0)

    @property
    def abar_prev(self) -> torch.Tensor:
        """abar_{t-1}, with abar_{-1} = 1."""
        a = self.abar
        return torch.cat([a.new_ones(1), a[:-1]])

    def timesteps(self, k: int | None = None) -> list[int]:
        """The first k timesteps of the reverse chain: T-1, T-2, ..., T-k (all T by default)."""
        k = self.T if k is None else k
        if not 1 <= k <= self.T:
            raise PdfastError(f"number of steps {k} is outside 1..{self.T} (the model's schedule has T={self.T})")
        return list(range(self.T - 1, self.T - 1 - k, -1))

    def respaced(self, n: int) -> tuple["Schedule", list[int]]:
        """(schedule, kept): the schedule over n evenly spaced timesteps kept = tau_0 < ... < tau_(n-1) (0 and T-1
        included), with betas beta'_i = 1 - abar_tau_i / abar_tau_(i-1) (beta'_0 = 1 - abar_tau_0), so that its
        abar'_i equals abar_tau_i; the network is still called at tau_i (improved DDPM's respacing)."""
        if not 2 <= n <= self.T:
            raise PdfastError(f"a respaced chain needs 2..{self.T} steps (the model's schedule has T={self.T}), got {n}")
        kept = torch.linspace(0, self.T - 1, n, dtype=torch.float64).round().long()
        ab = self.abar[kept]
        betas = 1 - ab / torch.cat([ab.new_ones(1), ab[:-1]])
        return replace(self, betas=betas, config=dict(self.config)), kept.tolist()

    def posterior_std(self) -> torch.Tensor:
        """sigma_t per variance_type: fixed_small sqrt(beta_t (1-abar_{t-1})/(1-abar_t)), fixed_large sqrt(beta_t); 0 at t = 0."""
        if self.variance_type == "fixed_large":
            var = self.betas.clone()
        else:
            var = (self.betas * (1 - self.abar_prev) / (1 - self.abar)).clamp(min=1e-20)
        std = var.sqrt()
        std[0] = 0.0
        return std

    def step_coefficients(self) -> dict[str, torch.Tensor]:
        """Per-t coefficients of x_{t-1} = c1 (x_t - c2 eps) + sigma z, plus the x0-form ones used with clip_sample.

        c1 = 1/sqrt(alpha_t), c2 = beta_t / sqrt(1 - abar_t);
        x0 form: x0 = (x_t - sqrt(1-abar_t) eps)/sqrt(abar_t), mean = a0 x0 + at x_t,
        a0 = sqrt(abar_{t-1}) beta_t/(1-abar_t), at = sqrt(alpha_t)(1-abar_{t-1})/(1-abar_t).
        """
        a, ab, abp, b = self.alphas, self.abar, self.abar_prev, self.betas
        return {
            "c1": 1.0 / a.sqrt(),
            "c2": b / (1 - ab).sqrt(),
            "sigma": self.posterior_std(),
            "sqrt_abar": ab.sqrt(),
            "sqrt_one_minus_abar": (1 - ab).sqrt(),
            "a0": abp.sqrt() * b / (1 - ab),
            "at": a.sqrt() * (1 - abp) / (1 - ab),
        }

    # ---------- trigger-shift scales (docs/method.md section 3) ----------
    def rho(self) -> torch.Tensor:
        """BadDiffusion trigger coefficient rho_t = (1 - sqrt(alpha_t)) sqrt(1 - abar_t) / beta_t."""
        return (1 - self.alphas.sqrt()) * (1 - self.abar).sqrt() / self.betas

    def analytic_scales(self, k: int, family: str = "sde") -> torch.Tensor:
        """lambda for the first k chain steps (t = T-1 .. T-k): rho_t for SDE (BadDiffusion), 2 rho_t for ODE samplers."""
        if family not in ("sde", "ode"):
            raise PdfastError(f"unknown sampler family '{family}'; use sde or ode")
        ts = self.timesteps(k)
        lam = self.rho()[ts]
        return (2 * lam if family == "ode" else lam).to(torch.float32)


# ---------------------------------------------------------------- attack families' coefficients (pdfast.families)
def sqrt_one_minus_abar_prev(schedule: "Schedule") -> torch.Tensor:
    """sqrt(1 - abar_{t-1}), with abar_{-1} = 1 (float64)."""
    return (1 - schedule.abar_prev.to(torch.float64)).clamp_min(0).sqrt()


def shift_increments(schedule: "Schedule") -> torch.Tensor:
    """k_t = h_t of TrojDiff and VillanDiffusion: the per-step mean increments of a chain whose marginal mean
    carries sqrt(1 - abar_t) mu, k_t = sqrt(1 - abar_t) - sqrt(alpha_t) sqrt(1 - abar_{t-1}) (the closed form of
    their recursion sum_j k_{t-j} prod sqrt(alpha) = sqrt(1 - abar_t))."""
    a, ab = schedule.alphas.to(torch.float64), schedule.abar.to(torch.float64)
    return (1 - ab).sqrt() - a.sqrt() * sqrt_one_minus_abar_prev(schedule)


def villan_coefficients(schedule: "Schedule", psi: float, solver: str = "sde") -> tuple[torch.Tensor, torch.Tensor]:
    """(rho_hat_t, c_t) per t, float64: rho_hat_t = psi (1 - sqrt(abar_t)) + (1 - psi) sqrt(1 - abar_t);
    c_t = psi rho_t + (1 - psi) [(1 - sqrt(alpha_t)) sqrt(1 - abar_t) + h_t (alpha_t - abar_t) / beta_t], x2 for ODE."""
    a, ab = schedule.alphas.to(torch.float64), schedule.abar.to(torch.float64)
    step = psi * (1 - ab.sqrt()) + (1 - psi) * (1 - ab).sqrt()
    bad = schedule.rho().to(torch.float64)
    troj = (1 - a.sqrt()) * (1 - ab).sqrt() + shift_increments(schedule) * (a - ab) / (1 - a)
    coef = psi * bad + (1 - psi) * troj
    return step, (2 * coef if solver == "ode" else coef)


def trojdiff_mu_coefficient(schedule: "Schedule") -> torch.Tensor:
    """TrojDiff's mu coefficient in the posterior mean (before the division by 1 - abar_t), float64:
    sqrt(1 - abar_{t-1}) beta_t - (1 - abar_{t-1}) sqrt(alpha_t) k_t."""
    s_prev = sqrt_one_minus_abar_prev(schedule)
    b, a = schedule.betas.to(torch.float64), schedule.alphas.to(torch.float64)
    return s_prev * b - s_prev ** 2 * a.sqrt() * shift_increments(schedule)
