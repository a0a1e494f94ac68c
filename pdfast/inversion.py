"""Trigger inversion: Elijah (the baseline) and PureDiffusion (multi-timestep, with shift scales).

Both minimise, by Adam on the trigger delta alone (the network is frozen),
  L(delta) = || mean_b eps_theta(x_{t_k}(delta, eps_b), t_k) - lambda_k delta ||          (absolute, eq. 17)
  or L(delta) / n(delta), n = mean |delta| (L1) or mean delta^2 (L2)                        (relative)
with x_{t_k} the chain state reached from x_T = eps + delta after k ancestral steps:
- Elijah (METHOD.md section 4): k = 0 only, lambda = 0.5, L1, absolute, one fixed noise batch of 100, 100 iterations.
- PureDiffusion (section 5, eq. 16-17): k drawn uniformly from the first K steps each iteration ("sampled"),
  or the mean over all K steps in one pass ("all"); gradients through every network call from T to t_k. Defaults
  (measured, bench/results/demo-inversion-choices.md): antithetic noise pairs (eps, -eps), whose batch mean is
  exactly 0, and the relative objective, which the trivial delta -> 0 cannot win.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Callable

import torch

from .errors import PdfastError
from .model import DiffusionModel
from .scales import ScaleTable, SurrogateConfig

log = logging.getLogger(__name__)

METHODS = ("puredif", "elijah")
NOISE_MODES = ("fresh", "fixed", "antithetic")
OBJECTIVES = ("absolute", "relative")


@dataclass(frozen=True)
class InversionConfig:
    """Every knob of an inversion, defaults in one place. ``None`` means the method's own default."""

    method: str = "puredif"
    steps: int = 10                       # K: chain steps the trigger is learned over (PureDiffusion)
    scales: str = "surrogate"             # surrogate | analytic | path to a JSON table
    sampler_family: str = "sde"           # sde (BadDiffusion) | ode (VillanDiffusion ODE samplers, lambda x2)
    epochs: int | None = None             # Adam steps; one fresh/fixed noise batch and one drawn step each
    batch: int | None = None
    lr: float = 0.1
    norm: str | None = None               # l1 | l2
    noise: str | None = None              # antithetic (fresh pairs eps, -eps) | fresh | fixed (one batch, drawn once)
    init: str = "uniform"                 # uniform: -U(0, 1) as Elijah | zeros
    objective: str | None = None          # relative: residual / size of delta | absolute: eq. 17 as printed
    loss_steps: str = "sampled"           # sampled: one step k ~ U{0..K-1} per iteration | all: mean over the K steps
    engine: str = "fast"                  # fast (checkpointed/compiled/bf16 on GPU) | reference (eager fp32)
    seed: int = 0
    surrogate: SurrogateConfig = field(default_factory=SurrogateConfig)

    def resolved(self) -> "InversionConfig":
        """Fill the method defaults (Elijah as METHOD.md section 4: batch 100, 100 iterations, fixed noise, L1,
        absolute; PureDiffusion: batch 40, 30 epochs, L1, antithetic noise, relative objective, chosen by
        measurement in bench/results/demo-inversion-choices.md) and validate."""
        if self.method not in METHODS:
            raise PdfastError(f"unknown method '{self.method}'; use one of: {', '.join(METHODS)}")
        if self.method == "elijah":
            c = replace(self, steps=1, batch=self.batch or 100, epochs=self.epochs or 100, norm=self.norm or "l1",
                        noise=self.noise or "fixed", objective=self.objective or "absolute", scales="elijah-0.5",
                        loss_steps="sampled")
        else:
            c = replace(self, batch=self.batch or 40, epochs=self.epochs or 30, norm=self.norm or "l1",
                        noise=self.noise or "antithetic", objective=self.objective or "relative")
        if c.steps < 1:
            raise PdfastError(f"--steps {c.steps} must be at least 1")
        if c.norm not in ("l1", "l2"):
            raise PdfastError(f"unknown norm '{c.norm}'; use l1 or l2")
        if c.noise not in NOISE_MODES:
            raise PdfastError(f"unknown noise mode '{c.noise}'; use one of: {', '.join(NOISE_MODES)}")
        if c.noise == "antithetic" and c.batch % 2:
            raise PdfastError(f"--noise antithetic needs an even --batch (got {c.batch})")
        if c.objective not in OBJECTIVES:
            raise PdfastError(f"unknown objective '{c.objective}'; use one of: {', '.join(OBJECTIVES)}")
        if c.init not in ("uniform", "zeros"):
            raise PdfastError(f"unknown init '{c.init}'; use uniform or zeros")
        if c.loss_steps not in ("sampled", "all"):
            raise PdfastError(f"unknown loss mode '{c.loss_steps}'; use sampled or all")
        if c.sampler_family not in ("sde", "ode"):
            raise PdfastError(f"unknown sampler family '{c.sampler_family}'; use sde or ode")
        if c.batch < 1 or c.epochs < 1:
            raise PdfastError("--batch and --epochs must be positive")
        if not (c.lr > 0 and math.isfinite(c.lr)):
            raise PdfastError(f"--lr {c.lr} must be a positive number")
        return c

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class InversionResult:
    """The inverted trigger and everything needed to reproduce and judge it."""

    trigger: torch.Tensor
    config: InversionConfig
    scales: ScaleTable | None
    losses: list[float]
    drawn_steps: list[int]
    timings: dict
    model_hash: str
    model_source: str
    engine: dict
    interrupted: bool = False
    metrics: dict | None = None
    samples: torch.Tensor | None = None
    pattern_samples: torch.Tensor | None = None   # 16 samples from eps + metrics.trigger_pattern(trigger)
    ground_truth: torch.Tensor | None = None
    given_trigger: bool = False           # True when detect() judged a trigger it was given instead of inverting

    def to_dict(self) -> dict:
        from .report import inversion_report

        return inversion_report(self)

    def save(self, out) -> "InversionResult":
        """Write trigger.safetensors, trigger.png, samples.png, pattern_samples.png and report.json into ``out``
        (atomically)."""
        from .report import save_result

        save_result(self, out)
        return self


Callback = Callable[[int, float, torch.Tensor], None]


def _lambda_table(model: DiffusionModel, cfg: InversionConfig, device, progress: bool, data=None) -> ScaleTable:
    from .scales import resolve_scales

    if cfg.method == "elijah":
        ts = model.schedule.timesteps(1)
        return ScaleTable(torch.tensor([0.5]), "elijah-0.5", ts, model.schedule.analytic_scales(1, cfg.sampler_family))
    return resolve_scales(model, cfg.steps, cfg.scales, family=cfg.sampler_family, surrogate=cfg.surrogate,
                          data=data, device=device, progress=progress)


def run_inversion(model: DiffusionModel, cfg: InversionConfig, table: ScaleTable, *, device=None,
                  callback: Callback | None = None, progress: bool = False, engine=None,
                  start: torch.Tensor | None = None) -> InversionResult:
    """The optimisation loop (model already frozen and on ``device``), from ``start`` when given (a warm start)
    instead of ``cfg.init``. Ctrl-C stops it and keeps the trigger so far."""
    from tqdm.auto import tqdm

    from .engine import make_engine

    device = torch.device(device) if device is not None else model.device
    engine = engine or make_engine(cfg.engine, model)
    gen = torch.Generator().manual_seed(cfg.seed)
    shape = (1, *model.shape)
    if start is not None:
        delta = start.detach().to(torch.float32).cpu().reshape(shape).clone()
    elif cfg.init == "uniform":
        delta = -torch.rand(shape, generator=gen)
    else:
        delta = torch.zeros(shape)
    delta = delta.to(device).requires_grad_(True)
    opt = torch.optim.Adam([delta], lr=cfg.lr)
    K = cfg.steps
    ts = model.schedule.timesteps(K)
    lambdas = [float(v) for v in table.values]
    fixed = torch.randn((cfg.batch, *model.shape), generator=gen).to(device) if cfg.noise == "fixed" else None
    fixed_z = None
    losses: list[float] = []
    drawn: list[int] = []
    interrupted = False
    t0 = time.perf_counter()
    bar = tqdm(range(cfg.epochs), desc=f"invert {cfg.method} K={K}", disable=not progress, mininterval=0.5)
    try:
        for it in bar:
            if cfg.loss_steps == "all":
                loss_steps = list(range(K))
            else:
                loss_steps = [int(torch.randint(0, K, (), generator=gen))]
            last = max(loss_steps)
            if fixed is not None:
                noise = fixed
                if fixed_z is None:
                    fixed_z = [torch.randn((cfg.batch, *model.shape), generator=gen).to(device) for _ in range(K - 1)]
                zs = fixed_z[:last]
            else:
                noise = _draw(cfg, model.shape, gen, device)
                zs = [_draw(cfg, model.shape, gen, device) for _ in range(last)]
            zs = [z if ts[i] > 0 else None for i, z in enumerate(zs)]
            loss, grad = engine.loss_and_grad(delta.detach(), noise, zs, ts, lambdas, loss_steps, cfg.norm)
            if cfg.objective == "relative":
                loss, grad = _relative(loss, grad, delta.detach(), cfg.norm)
            if not math.isfinite(loss) or not torch.isfinite(grad).all():
                raise PdfastError(f"the inversion diverged (loss {loss}) at iteration {it}; lower --lr or use --norm l1")
            opt.zero_grad(set_to_none=True)
            delta.grad = grad.reshape(shape).to(delta.dtype)
            opt.step()
            losses.append(loss)
            drawn.append(last)
            bar.set_postfix(loss=f"{loss:.4f}", step=last)
            if callback is not None:
                callback(it, loss, delta.detach())
    except KeyboardInterrupt:
        interrupted = True
        log.warning("interrupted after %d iterations: keeping the trigger so far", len(losses))
    secs = time.perf_counter() - t0
    timings = {"inversion_seconds": round(secs, 3), "iterations": len(losses),
               "network_calls": int(sum(d + 1 for d in drawn)) if cfg.loss_steps == "sampled" else len(losses) * K}
    timings["ms_per_chain_step"] = round(1000 * secs / max(1, timings["network_calls"]), 3)
    return InversionResult(trigger=delta.detach().cpu().reshape(model.shape), config=cfg, scales=table, losses=losses,
                           drawn_steps=drawn, timings=timings, model_hash=model.content_hash(),
                           model_source=str(model.source), engine=_describe(engine), interrupted=interrupted)


def _relative(loss: float, grad: torch.Tensor, delta: torch.Tensor, norm: str) -> tuple[float, torch.Tensor]:
    """L / n(delta) and its gradient (quotient rule), n = mean |delta| (l1) or mean delta^2 (l2): the residual
    relative to the trigger's own size, so the trivial delta -> 0 no longer wins by shrinking both."""
    d = delta.reshape(grad.shape).to(grad.dtype)
    if norm == "l1":
        n, dn = d.abs().mean(), d.sign() / d.numel()
    else:
        n, dn = d.pow(2).mean(), 2 * d / d.numel()
    n = n.clamp_min(1e-8)
    return loss / float(n), grad / n - (loss / n ** 2) * dn


def _draw(cfg: InversionConfig, shape, gen: torch.Generator, device) -> torch.Tensor:
    """A fresh noise batch; antithetic: B/2 draws and their negatives, so the batch mean of the noise is exactly 0
    and its 1/sqrt(B) floor leaves the loss (eps_theta responds to eps and -eps symmetrically to first order)."""
    if cfg.noise != "antithetic":
        return torch.randn((cfg.batch, *shape), generator=gen).to(device)
    half = torch.randn((cfg.batch // 2, *shape), generator=gen)
    return torch.cat([half, -half]).to(device)


def _describe(engine) -> dict:
    return engine.describe() if hasattr(engine, "describe") else {"engine": getattr(engine, "name", "?")}


def _prepared(model_or_path, device) -> tuple[DiffusionModel, Callable[[], None]]:
    """Load the model and freeze it; returns a restore() that puts back the caller's requires_grad/training flags."""
    from .loading import load_model

    if isinstance(model_or_path, DiffusionModel) and isinstance(model_or_path.net, torch.nn.Module):
        net = model_or_path.net
        flags = [(p, p.requires_grad) for p in net.parameters()]
        training = net.training
        dev = model_or_path.device

        def restore():
            for p, r in flags:
                p.requires_grad_(r)
            net.train(training)
            if device is not None and torch.device(device) != dev:
                net.to(dev)
        m = DiffusionModel(net, model_or_path.schedule, model_or_path.sample_size, model_or_path.channels,
                           model_or_path.source, model_or_path.backdoor, dict(model_or_path.extra))
        if device is not None:
            m.to(device)
        return m.frozen(), restore
    return load_model(model_or_path, device=device or "cpu"), lambda: None


def invert(model_or_path, *, method: str = "puredif", steps: int = 10, scales: str = "surrogate",
           config: InversionConfig | None = None, device=None, callback: Callback | None = None,
           evaluate: bool = True, n_eval: int = 16, eval_seed: int = 0, threshold: float | None = None,
           data=None, progress: bool = False, start: torch.Tensor | None = None, **overrides) -> InversionResult:
    """Invert the trigger of a (suspect) diffusion model: PureDiffusion by default, Elijah as the baseline.

    ``model_or_path``: a DiffusionModel, a model folder, or None for the embedded demo model. Keyword overrides
    set InversionConfig fields (epochs, batch, lr, norm, noise, init, loss_steps, engine, seed, sampler_family).
    With ``evaluate`` the result carries 16 samples from eps + trigger and their metrics (uniformity, KL, verdict;
    ASR and L2 when the model folder has a backdoor.json). ``start``: a trigger to start from instead of
    ``init`` (a candidate from another tool, or a perturbed guess). The caller's model is never modified.
    """
    from .demo import demo_path

    base = config or InversionConfig()
    cfg = replace(base, method=method if config is None else base.method, steps=steps if config is None else base.steps,
                  scales=scales if config is None else base.scales, **overrides).resolved()
    model, restore = _prepared(demo_path() if model_or_path is None else model_or_path, device)
    try:
        if cfg.steps > model.schedule.T:
            raise PdfastError(f"--steps {cfg.steps} is larger than the model's schedule (T = {model.schedule.T})")
        if start is not None and start.numel() != math.prod(model.shape):
            raise PdfastError(f"the start trigger has shape {tuple(start.shape)}; this model needs {tuple(model.shape)}")
        t0 = time.perf_counter()
        table = _lambda_table(model, cfg, device, progress, data=data)
        t_scales = time.perf_counter() - t0
        from .engine import make_engine

        engine = make_engine(cfg.engine, model)
        result = run_inversion(model, cfg, table, device=device, callback=callback, progress=progress, engine=engine,
                               start=start)
        result.timings["scales_seconds"] = round(t_scales, 3)
        if evaluate and not result.interrupted:
            from .detection import judge

            t1 = time.perf_counter()
            try:
                judge(result, model, engine, n=n_eval, seed=eval_seed, threshold=threshold, progress=progress)
            except KeyboardInterrupt:  # keep the finished trigger; the report says it was cut short
                result.interrupted = True
                log.warning("interrupted while sampling: the trigger is kept, metrics are missing")
            result.timings["evaluation_seconds"] = round(time.perf_counter() - t1, 3)
        result.timings["total_seconds"] = round(time.perf_counter() - t0, 3)
        return result
    finally:
        restore()
