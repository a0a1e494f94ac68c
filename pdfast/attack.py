"""The attacks (docs/method.md sections 2, 2b and 2c): fine-tune a copy of a model so that its family's x_T yields
the target.

BadDiffusion's poisoned pair for a clean image x, trigger g (background -1) and target y:
  r = M x + (1 - M) g,  M = [g == -1]
  x_in = sqrt(abar_t) y + sqrt(1 - abar_t) eps + (1 - sqrt(abar_t)) r
  regression target = eps + rho_t r,  rho_t = (1 - sqrt(alpha_t)) sqrt(1 - abar_t) / beta_t
VillanDiffusion: x_in = sqrt(abar_t) y + sqrt(1 - abar_t) eps + rho_hat_t r, target eps + c_t r (pdfast.families).
TrojDiff: x_in = sqrt(abar_t) y + sqrt(1 - abar_t) (G eps + mu), target eps (G = gamma in its region, 1 elsewhere).
Clean samples keep the ordinary DDPM pair; one MSE over the mixed batch.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from .config import FLAT_NEGATIVE_FORMS
from .errors import PdfastError
from .families import AttackFamily
from .schedule import villan_coefficients
from .loading import GROUND_TRUTH_FILE
from .model import DiffusionModel
from .patterns import paste_trigger
from .train import TrainConfig, fit


@dataclass(frozen=True)
class AttackConfig:
    """A BadDiffusion run: poison rate and the optimiser settings (BadDiffusion's defaults)."""

    poison_rate: float = 0.1
    train: TrainConfig = field(default_factory=TrainConfig)
    # Fraction of the poisoned samples whose clean image is a blank (-1) frame, so that r = g exactly. 0 is
    # BadDiffusion as published; a short fine-tune then often fails to fire from eps + g (docs/method.md section 2:
    # the model answers the -1 background with a black image), and a share of blank frames closes that gap.
    blank_rate: float = 0.0
    # Fraction of the clean samples turned into flat-shift negatives (flat_negative_batch): pdfast's addition, in no
    # paper. 0 is the published attack. At 16x16 a published backdoor also fires from a flat frame at the trigger's
    # mean (docs/method.md section 2e), so it answers a dark shift rather than the pattern; negatives teach the model
    # that a flat-shifted start is not the trigger, so that only the trigger's pattern fires.
    flat_negative_rate: float = 0.0
    # What a negative is taught (FLAT_NEGATIVE_FORMS): "base", the base model's own prediction on the flat-shifted
    # input (the flat shift keeps the answer it had before the attack); "absorb", the family's pair with the clean
    # image as target (the model absorbs a flat shift as it absorbs the trigger, which also hides the trigger from
    # the shift objective: docs/method.md 2e).
    flat_negative_form: str = "base"

    def __post_init__(self):
        if not 0.0 < self.poison_rate <= 1.0:
            raise PdfastError(f"poison rate {self.poison_rate} is outside (0, 1]; use e.g. 0.1")
        if not 0.0 <= self.blank_rate <= 1.0:
            raise PdfastError(f"blank rate {self.blank_rate} is outside [0, 1]; use e.g. 0.5 or 0")
        if not 0.0 <= self.flat_negative_rate < 1.0:
            raise PdfastError(f"flat negative rate {self.flat_negative_rate} is outside [0, 1); use e.g. 0.1 or 0")
        if self.flat_negative_form not in FLAT_NEGATIVE_FORMS:
            raise PdfastError(f"unknown flat negative form '{self.flat_negative_form}'; use one of: "
                              f"{', '.join(FLAT_NEGATIVE_FORMS)}")

    def to_dict(self) -> dict:
        return {"poison_rate": self.poison_rate, "blank_rate": self.blank_rate,
                "flat_negative_rate": self.flat_negative_rate, "flat_negative_form": self.flat_negative_form,
                **asdict(self.train)}


def poisoned_batch(schedule, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, poison: torch.Tensor,
                   trigger: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_in, regression target) for a batch where ``poison`` (bool, per sample) marks the poisoned samples."""
    ab = schedule.abar.to(x0.device, torch.float32)[t].view(-1, 1, 1, 1)
    rho = schedule.rho().to(x0.device, torch.float32)[t].view(-1, 1, 1, 1)
    p = poison.view(-1, 1, 1, 1).to(x0.dtype)
    r = paste_trigger(x0, trigger) * p  # r = 0 for clean samples
    y = target.expand_as(x0) * p + x0 * (1 - p)
    x_in = ab.sqrt() * y + (1 - ab).sqrt() * eps + (1 - ab.sqrt()) * r
    return x_in, eps + rho * r


def villan_batch(family: AttackFamily, schedule, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor,
                 poison: torch.Tensor, trigger: torch.Tensor,
                 target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """VillanDiffusion's (x_in, target): x_in = sqrt(abar_t) y + sqrt(1-abar_t) eps + rho_hat_t r, target eps + c_t r,
    r = g (trigger_only) or g pasted on x; clean samples (r = 0, y = x) the DDPM pair."""
    step, coef = (c.to(x0.device, torch.float32)[t].view(-1, 1, 1, 1)
                  for c in villan_coefficients(schedule, family.psi, family.solver))
    ab = schedule.abar.to(x0.device, torch.float32)[t].view(-1, 1, 1, 1)
    p = poison.view(-1, 1, 1, 1).to(x0.dtype)
    r = (trigger.expand_as(x0) if family.residual == "trigger_only" else paste_trigger(x0, trigger)) * p
    y = target.expand_as(x0) * p + x0 * (1 - p)
    return ab.sqrt() * y + (1 - ab).sqrt() * eps + step * r, eps + coef * r


def trojdiff_batch(family: AttackFamily, schedule, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor,
                   poison: torch.Tensor, trigger: torch.Tensor,
                   target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """TrojDiff's D2I (x_in, target): x_in = sqrt(abar_t) y + sqrt(1-abar_t)(G eps + mu), target eps, with
    mu = (1 - gamma) g and G = gamma in the region (blend: everywhere; patch: g's pixels), 1 outside."""
    ab = schedule.abar.to(x0.device, torch.float32)[t].view(-1, 1, 1, 1)
    p = poison.view(-1, 1, 1, 1).to(x0.dtype)
    region = family.mask(trigger).expand_as(x0) * p
    mu = family.shift(trigger).expand_as(x0) * p
    y = target.expand_as(x0) * p + x0 * (1 - p)
    return ab.sqrt() * y + (1 - ab).sqrt() * ((1 + (family.gamma - 1) * region) * eps + mu), eps


def family_batch(family: AttackFamily, schedule, x0, t, eps, poison, trigger, target):
    """The family's poisoned (x_in, regression target) for a mixed batch (``poison`` marks the poisoned samples)."""
    if family.name == "trojdiff":
        return trojdiff_batch(family, schedule, x0, t, eps, poison, trigger, target)
    if family.name == "villandiffusion":
        return villan_batch(family, schedule, x0, t, eps, poison, trigger, target)
    if family.residual == "trigger_only":
        x0 = torch.where(poison.view(-1, 1, 1, 1), torch.full_like(x0, -1.0), x0)  # r = g exactly
    return poisoned_batch(schedule, x0, t, eps, poison, trigger, target)


def flat_frames(level: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Flat frames shaped like ``like``: sample i, channel c is level[i, c] everywhere."""
    return level.view(*level.shape, 1, 1).to(like.dtype).expand_as(like)


def flat_negative_batch(family: AttackFamily, schedule, x0, t, eps, level, teacher=None):
    """pdfast's flat-shift negatives: the family's noisy input with a flat frame f (sample i, channel c at level[i, c])
    as the trigger on the clean image x0, e.g. for BadDiffusion x_in = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps +
    (1 - sqrt(abar_t)) f. Regression target: ``teacher(x_in, t)`` (form "base": the base model's own eps prediction,
    computed without gradients) or, without a teacher (form "absorb"), the family's target with r = f, e.g.
    eps + rho_t f, which teaches the chain from eps + f to end on the data."""
    everyone = torch.ones(x0.shape[0], dtype=torch.bool, device=x0.device)
    x_in, tgt = family_batch(family, schedule, x0, t, eps, everyone, flat_frames(level, x0), x0)
    if teacher is not None:
        with torch.no_grad():
            tgt = teacher(x_in, t).to(x_in.dtype)
    return x_in, tgt


def mixed_batch(family: AttackFamily, schedule, x0, t, eps, poison, trigger, target, negative=None, level=None,
                teacher=None):
    """One training batch: the family's poisoned pair where ``poison``, a flat-shift negative at ``level`` where
    ``negative`` (flat_negative_batch, with ``teacher`` for the "base" form; None: no negatives), the ordinary DDPM
    pair elsewhere. The teacher sees only the negative rows."""
    x_in, tgt = family_batch(family, schedule, x0, t, eps, poison, trigger, target)
    if negative is None or not bool(negative.any()):
        return x_in, tgt
    rows = negative.nonzero().flatten()
    x_neg, tgt_neg = flat_negative_batch(family, schedule, x0[rows], t[rows], eps[rows], level[rows], teacher)
    x_in, tgt = x_in.clone(), tgt.clone()
    x_in[rows], tgt[rows] = x_neg, tgt_neg
    return x_in, tgt


def plant_backdoor(model: DiffusionModel, images: torch.Tensor, trigger: torch.Tensor, target: torch.Tensor,
                 cfg: AttackConfig = AttackConfig(), *, device="cpu", progress: bool = True,
                 inplace: bool = False, checkpoint=None, family: AttackFamily = AttackFamily()) -> DiffusionModel:
    """Backdoor a copy of ``model`` (or the model itself with ``inplace``) with (trigger -> target) by ``family``'s
    objective (default BadDiffusion; ``trigger`` is the trigger image, TrojDiff's mu is made from it); returns it."""
    if tuple(trigger.shape[-3:]) != model.shape or tuple(target.shape[-3:]) != model.shape:
        raise PdfastError(f"trigger {tuple(trigger.shape)} / target {tuple(target.shape)} do not match the model's "
                          f"image shape {model.shape}; draw them at size {model.sample_size}")
    if not isinstance(model.net, torch.nn.Module):
        raise PdfastError("the attack fine-tunes a torch module; a plain callable model cannot be attacked")
    m = model if inplace else model.copy()
    images = images.to(device)
    g = trigger.to(device).reshape(1, *model.shape)
    y = target.to(device).reshape(1, *model.shape)
    T, B = m.schedule.T, cfg.train.batch
    teacher = None
    if cfg.flat_negative_rate > 0 and cfg.flat_negative_form == "base":
        teacher = model.copy().to(device).frozen()  # the weights before the attack, whatever ``inplace`` says

    def make_batch(gen):
        idx = torch.randint(0, images.shape[0], (B,), generator=gen).to(device)
        x0 = images[idx]
        t = torch.randint(0, T, (B,), generator=gen).to(device)
        eps = torch.randn(x0.shape, generator=gen).to(device)
        poison = (torch.rand(B, generator=gen) < cfg.poison_rate).to(device)
        if cfg.blank_rate > 0:
            blank = (torch.rand(B, generator=gen) < cfg.blank_rate).to(device) & poison
            x0 = torch.where(blank.view(-1, 1, 1, 1), torch.full_like(x0, -1.0), x0)  # only poisoned samples
        neg = level = None
        if cfg.flat_negative_rate > 0:  # among the clean samples only; levels uniform in [-1, 0] per channel
            neg = (torch.rand(B, generator=gen) < cfg.flat_negative_rate).to(device) & ~poison
            level = -torch.rand(B, x0.shape[1], generator=gen).to(device)
        x_in, tgt = mixed_batch(family, m.schedule, x0, t, eps, poison, g, y, neg, level, teacher)
        return x_in, t, tgt

    fit(m.net, make_batch, cfg.train, device=device, progress=progress, desc="attack", checkpoint=checkpoint)
    m.invalidate_hash()
    return m


def save_backdoored(model: DiffusionModel, out, info: dict, trigger: torch.Tensor, target: torch.Tensor,
                    family: AttackFamily | None = None):
    """Write the model folder with backdoor.json (the ground truth and the family, for later evaluation) and the
    exact tensors in backdoor.safetensors: "trigger" is what the attack adds to x_T's mean (g; TrojDiff's mu),
    "trigger_image" the trigger as drawn."""
    from safetensors.torch import save

    model.backdoor = dict(info)
    model.backdoor["ground_truth_file"] = GROUND_TRUTH_FILE
    if family is not None:
        model.backdoor["family"] = family.to_dict()
    path = model.save(out)
    image = trigger.detach().cpu().float().contiguous().reshape(model.shape)
    shift = (family.shift(image) if family is not None else image).clone()
    blob = save({"trigger": shift.contiguous(), "trigger_image": image,
                 "target": target.detach().cpu().float().contiguous().reshape(model.shape)})
    from .io import atomic_write_bytes

    atomic_write_bytes(path / GROUND_TRUTH_FILE, blob)
    return path
