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
    refine_epochs: int | None = None      # then Adam steps on eq. 17 from the first result's pattern (0: none)
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
        absolute, no refinement; PureDiffusion: batch 40, 30 epochs, L1, antithetic noise, relative objective, then
        30 refinement epochs on eq. 17, chosen by measurement in bench/results/demo-inversion-choices.md) and
        validate."""
        if self.method not in METHODS:
            raise PdfastError(f"unknown method '{self.method}'; use one of: {', '.join(METHODS)}")
        if self.method == "elijah":
            c = replace(self, steps=1, batch=self.batch or 100, epochs=self.epochs or 100, norm=self.norm or "l1",
                        noise=self.noise or "fixed", objective=self.objective or "absolute", scales="elijah-0.5",
                        loss_steps="sampled", refine_epochs=self.refine_epochs or 0)
        else:
            c = replace(self, batch=self.batch or 40, epochs=self.epochs or 30, norm=self.norm or "l1",
                        noise=self.noise or "antithetic", objective=self.objective or "relative",
                        refine_epochs=30 if self.refine_epochs is None else self.refine_epochs)
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
        if c.refine_epochs < 0:
            raise PdfastError(f"--refine-epochs {c.refine_epochs} must be 0 (no refinement) or more")
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
    """The optimisation (model already frozen and on ``device``), from ``start`` when given (a warm start) instead
    of ``cfg.init``: ``cfg.epochs`` Adam steps on ``cfg.objective``, then, with ``cfg.refine_epochs``, a second run
    of Adam on the absolute objective (eq. 17) started from the pattern of the first result
    (``metrics.trigger_pattern``). Ctrl-C stops it and keeps the trigger so far."""
    from .engine import make_engine
    from .metrics import trigger_pattern

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
    K = cfg.steps
    loop = _Descent(model, cfg, engine, gen, device, model.schedule.timesteps(K), [float(v) for v in table.values],
                    callback, progress)
    interrupted = False
    t0 = time.perf_counter()
    try:
        delta = loop.run(delta, cfg.objective, cfg.epochs, "search")
        if cfg.refine_epochs:
            delta = loop.run(trigger_pattern(delta).reshape(shape), "absolute", cfg.refine_epochs, "refine")
    except KeyboardInterrupt:
        interrupted = True
        delta = loop.delta if loop.delta is not None else delta
        log.warning("interrupted after %d iterations: keeping the trigger so far", len(loop.losses))
    secs = time.perf_counter() - t0
    drawn = loop.drawn
    timings = {"inversion_seconds": round(secs, 3), "iterations": len(loop.losses), "stages": loop.stages,
               "network_calls": int(sum(d + 1 for d in drawn)) if cfg.loss_steps == "sampled" else len(drawn) * K}
    timings["ms_per_chain_step"] = round(1000 * secs / max(1, timings["network_calls"]), 3)
    return InversionResult(trigger=delta.detach().cpu().reshape(model.shape), config=cfg, scales=table,
                           losses=loop.losses, drawn_steps=drawn, timings=timings, model_hash=model.content_hash(),
                           model_source=str(model.source), engine=_describe(engine), interrupted=interrupted)


class _Descent:
    """Adam on the trigger alone; losses, drawn steps and the callback's iteration count run across stages."""

    def __init__(self, model, cfg: InversionConfig, engine, gen, device, ts, lambdas, callback, progress):
        self.model, self.cfg, self.engine, self.gen, self.device = model, cfg, engine, gen, device
        self.ts, self.lambdas, self.callback, self.progress = ts, lambdas, callback, progress
        self.fixed = torch.randn((cfg.batch, *model.shape), generator=gen).to(device) if cfg.noise == "fixed" else None
        self.fixed_z = None
        self.losses: list[float] = []
        self.drawn: list[int] = []
        self.stages: dict[str, int] = {}
        self.delta: torch.Tensor | None = None

    def _batch(self, last: int):
        cfg, shape = self.cfg, self.model.shape
        if self.fixed is not None:
            if self.fixed_z is None:
                self.fixed_z = [torch.randn((cfg.batch, *shape), generator=self.gen).to(self.device)
                                for _ in range(cfg.steps - 1)]
            return self.fixed, self.fixed_z[:last]
        return _draw(cfg, shape, self.gen, self.device), [_draw(cfg, shape, self.gen, self.device) for _ in range(last)]

    def run(self, delta0: torch.Tensor, objective: str, epochs: int, stage: str) -> torch.Tensor:
        from tqdm.auto import tqdm

        cfg, K = self.cfg, self.cfg.steps
        delta = delta0.detach().to(self.device, torch.float32).clone().requires_grad_(True)
        self.delta = delta
        opt = torch.optim.Adam([delta], lr=cfg.lr)
        self.stages[stage] = 0
        bar = tqdm(range(epochs), desc=f"invert {cfg.method} K={K} ({stage})", disable=not self.progress,
                   mininterval=0.5)
        for _ in bar:
            it = len(self.losses)
            loss_steps = list(range(K)) if cfg.loss_steps == "all" else [int(torch.randint(0, K, (), generator=self.gen))]
            last = max(loss_steps)
            noise, zs = self._batch(last)
            zs = [z if self.ts[i] > 0 else None for i, z in enumerate(zs)]
            loss, grad = self.engine.loss_and_grad(delta.detach(), noise, zs, self.ts, self.lambdas, loss_steps,
                                                   cfg.norm)
            if objective == "relative":
                loss, grad = _relative(loss, grad, delta.detach(), cfg.norm)
            if not math.isfinite(loss) or not torch.isfinite(grad).all():
                raise PdfastError(f"the inversion diverged (loss {loss}) at iteration {it}; lower --lr or use --norm l1")
            opt.zero_grad(set_to_none=True)
            delta.grad = grad.reshape(delta.shape).to(delta.dtype)
            opt.step()
            self.losses.append(loss)
            self.drawn.append(last)
            self.stages[stage] += 1
            bar.set_postfix(loss=f"{loss:.4f}", step=last)
            if self.callback is not None:
                self.callback(it, loss, delta.detach())
        return delta.detach()


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
