"""Backdoor attack families (docs/method.md sections 2, 2b and 2c): how each plants its backdoor, which sampler it fires
with, where x_T starts and which trigger-shift scale lambda_t PureDiffusion's objective should expect.

- baddiffusion: r = the trigger pasted on the clean image, the DDPM chain from x_T = eps + g.
- villandiffusion (unconditional, VP): x_t = sqrt(abar_t) y + sqrt(1-abar_t) eps + rho_hat_t r with
  rho_hat_t = psi (1 - sqrt(abar_t)) + (1 - psi) sqrt(1 - abar_t), regression target eps + c_t r; solver sde
  (DDPM chain) or ode (DDIM, eta 0, where c_t doubles); residual trigger_only (r = g) or pasted.
- trojdiff: x_T ~ N(mu, gamma^2 I), mu = (1 - gamma) * trigger image (blend, or a patch), target plain eps,
  fired by TrojDiff's own sampler (pdfast.chain.TrojDiffSampler).

A model folder's backdoor.json names its family; ``--attack-family`` names it for any other model; a model with
neither is treated as BadDiffusion (the family PureDiffusion was evaluated on).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch

from .errors import PdfastError
from .schedule import Schedule, villan_coefficients  # the coefficients live with the schedule

FAMILIES = ("baddiffusion", "villandiffusion", "trojdiff")
DEFAULT_FAMILY = "baddiffusion"
# The parameters each family has (what backdoor.json records, and the `pdfast attack` flags it accepts).
FAMILY_FIELDS = {"baddiffusion": ("residual",), "villandiffusion": ("solver", "psi", "residual", "ode_steps"),
                 "trojdiff": ("gamma", "trigger_type")}


@dataclass(frozen=True)
class AttackFamily:
    """One family with its parameters; the defaults are each paper's (TrojDiff: gamma 0.6 blend)."""

    name: str = DEFAULT_FAMILY
    solver: str = "sde"          # villandiffusion: sde (DDPM) or ode (DDIM)
    psi: float = 1.0             # villandiffusion: 1 BadDiffusion-style correction, 0 TrojDiff-style
    residual: str = "pasted"     # baddiffusion/villandiffusion: pasted on the clean image, or trigger_only (r = g)
    gamma: float = 0.6           # trojdiff: x_T's noise scale
    trigger_type: str = "blend"  # trojdiff: blend (the whole frame) or patch (the trigger's own pixels)
    ode_steps: int = 50          # DDIM steps of the ODE sampler

    def __post_init__(self):
        if self.name not in FAMILIES:
            raise PdfastError(f"unknown attack family '{self.name}'; use one of: {', '.join(FAMILIES)}")
        if self.solver not in ("sde", "ode"):
            raise PdfastError(f"solver '{self.solver}' is not sde or ode; use solver=sde (DDPM) or solver=ode (DDIM)")
        if self.solver == "ode" and self.name != "villandiffusion":
            raise PdfastError(f"{self.name} backdoors are trained for the DDPM sampler; "
                              "solver=ode is villandiffusion's")
        if not 0.0 <= self.psi <= 1.0:
            raise PdfastError(f"psi {self.psi} is outside [0, 1]; use 1 (BadDiffusion-style) or 0 (TrojDiff-style)")
        if self.residual not in ("pasted", "trigger_only"):
            raise PdfastError(f"residual '{self.residual}' is not pasted or trigger_only")
        if not 0.0 < self.gamma <= 1.0:
            raise PdfastError(f"gamma {self.gamma} is outside (0, 1]; TrojDiff uses 0.6 (blend) or 0.1 (patch)")
        if self.trigger_type not in ("blend", "patch"):
            raise PdfastError(f"trigger type '{self.trigger_type}' is not blend or patch")
        if not 1 <= self.ode_steps <= 10000:
            raise PdfastError(f"ode_steps {self.ode_steps} must be between 1 and the schedule's T")

    def to_dict(self) -> dict:
        """The fields that matter for this family (what backdoor.json records)."""
        d = asdict(self)
        return {"name": self.name, **{k: d[k] for k in FAMILY_FIELDS[self.name]}}

    def describe(self) -> str:
        """e.g. 'villandiffusion:solver=ode' (what --attack-family parses back): the name and its non-default fields."""
        d, default = self.to_dict(), asdict(AttackFamily())
        d = {k: v for k, v in d.items() if k != "name" and v != default[k]}
        return self.name + (":" + ",".join(f"{k}={v}" for k, v in d.items()) if d else "")

    def preset_key(self) -> str:
        """The key of the family's additions to the pdfast preset (config.FAMILY_PRESETS): the name, or for a
        trigger-only VillanDiffusion backdoor trained for ODE samplers "villandiffusion-ode" (the pair search's)."""
        ode = self.solver == "ode" and self.residual == "trigger_only"
        return self.name + ("-ode" if ode else "")

    # ------------------------------------------------------------ sampling semantics
    def shift(self, trigger_image: torch.Tensor) -> torch.Tensor:
        """What the attack adds to x_T's mean: g itself, or TrojDiff's mu = (1 - gamma) g (0 off the patch)."""
        if self.name != "trojdiff":
            return trigger_image
        return (1 - self.gamma) * trigger_image * self.mask(trigger_image)

    def mask(self, trigger_image: torch.Tensor) -> torch.Tensor:
        """TrojDiff's region (1 inside): the whole frame for blend, the trigger's own pixels (not -1) for patch."""
        if self.trigger_type == "blend" or self.name != "trojdiff":
            return torch.ones_like(trigger_image)
        g = trigger_image.reshape(-1, *trigger_image.shape[-3:])
        return (g > -1).any(dim=-3, keepdim=True).to(g.dtype).expand_as(g).reshape(trigger_image.shape)

    def trigger_bound(self) -> float:
        """The largest |x_T shift| the attack can make with a trigger image in [-1, 1]: 1 - gamma for TrojDiff (mu =
        (1 - gamma) g), else 1. ``bounds="image"`` projects the inverted shift onto [-bound, bound]."""
        return 1.0 - self.gamma if self.name == "trojdiff" else 1.0

    def noise_scale(self) -> float:
        """x_T = noise_scale * eps + shift: gamma for TrojDiff (its region is the whole frame at inversion), else 1."""
        return self.gamma if self.name == "trojdiff" else 1.0

    def sampler(self, schedule: Schedule, clip_sample: bool, steps: int | None = None,
                trigger_image: torch.Tensor | None = None, respace: int | None = None):
        """The sampler this family's backdoor fires with (all its steps, or the first ``steps``); TrojDiff's region
        is the patch of ``trigger_image`` when given (patch type), else the whole frame. ``respace``: the ancestral
        DDPM chain over that many evenly spaced steps (the verdict's short chain); TrojDiff's and the ODE chains are
        kept as they are."""
        from .chain import DDIMSampler, DDPMSampler, TrojDiffSampler

        if self.solver == "ode":
            return DDIMSampler(schedule, min(self.ode_steps, schedule.T), first=steps)
        if self.name == "trojdiff":
            mask = self.mask(trigger_image)[0] if trigger_image is not None and self.trigger_type == "patch" else None
            return TrojDiffSampler(schedule, self.gamma, steps, mask=mask)
        return DDPMSampler(schedule, steps, clip_sample=clip_sample, respace=respace)

    def inversion_sampler(self, schedule: Schedule, clip_sample: bool, k: int):
        """The chain the inversion walks for K steps: the family's sampler, except TrojDiff's, whose steps take mu
        itself (the engines differentiate x_T only): the plain DDPM chain from gamma eps + delta near t = T."""
        from .chain import DDPMSampler

        if self.name == "trojdiff":
            return DDPMSampler(schedule, k, clip_sample=clip_sample)
        if self.solver == "ode" and k > self.ode_steps:
            raise PdfastError(f"--steps {k} exceeds the ODE sampler's {self.ode_steps} DDIM steps; use --steps "
                              f"{self.ode_steps} or fewer, or ode_steps={k} in --attack-family")
        return self.sampler(schedule, clip_sample, k)

    def analytic_scales(self, schedule: Schedule, timesteps: list[int]) -> torch.Tensor:
        """lambda_t at ``timesteps``: VillanDiffusion's c_t (x2 for ODE; psi = 1 SDE is BadDiffusion's rho_t);
        TrojDiff has none (eps_theta predicts the noise itself on its chain, E = 0): 0, used with the relative
        objective, whose minimum is then where the network's mean output vanishes for a trigger of any size."""
        if self.name == "trojdiff":
            return torch.zeros(len(timesteps), dtype=torch.float32)
        psi = 1.0 if self.name == "baddiffusion" else self.psi
        _, coef = villan_coefficients(schedule, psi, self.solver)
        return coef[torch.as_tensor(timesteps)].to(torch.float32)


def parse_family(spec: str | AttackFamily | None) -> AttackFamily:
    """'villandiffusion:solver=ode,psi=0.5' -> AttackFamily; 'auto' or None -> baddiffusion."""
    if isinstance(spec, AttackFamily):
        return spec
    if spec in (None, "", "auto"):
        return AttackFamily()
    name, _, rest = str(spec).partition(":")
    kinds = {f.name: f.type for f in fields(AttackFamily)}
    values: dict = {}
    for item in filter(None, rest.split(",")):
        key, eq, val = item.partition("=")
        key = {"trigger": "trigger_type"}.get(key.strip(), key.strip())
        if not eq or key not in kinds or key == "name":
            raise PdfastError(f"--attack-family {spec}: '{item}' is not key=value with a key of "
                              f"{', '.join(k for k in kinds if k != 'name')}")
        try:
            values[key] = {"float": float, "int": int}.get(kinds[key], str)(val.strip())
        except ValueError:
            raise PdfastError(f"--attack-family {spec}: {key}={val} is not a {kinds[key]}") from None
    return AttackFamily(name=name.strip().lower(), **values)


def family_of(model, spec: str | AttackFamily | None = None) -> AttackFamily:
    """The family of ``model``: ``spec`` when given (not auto), else its backdoor.json's, else baddiffusion."""
    if spec not in (None, "", "auto"):
        return parse_family(spec)
    info = (getattr(model, "backdoor", None) or {})
    fam = info.get("family")
    if isinstance(fam, dict):
        return AttackFamily(**fam)
    if info.get("attack") in FAMILIES:
        return AttackFamily(name=info["attack"], residual="trigger_only" if info.get("blank_rate") == 1 else "pasted")
    return AttackFamily()
