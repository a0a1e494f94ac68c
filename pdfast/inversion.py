"""Trigger inversion: Elijah (the baseline) and PureDiffusion (multi-timestep, with shift scales).

Both minimise, by Adam on the trigger delta alone (the network is frozen), an objective of pdfast.objectives:
  L(delta) = mean_{k in S} || mean_b eps_theta(x_{t_k}(delta, eps_b), t_k) - lambda_k delta ||    (absolute, eq. 17)
  or L(delta) / n(delta), n = mean |delta| (L1) or mean delta^2 (L2)                              (relative)
with x_{t_k} the chain state reached from x_T = eps + delta after k ancestral steps (pdfast.chain):
- Elijah (docs/method.md section 4): k = 0 only, lambda = 0.5, L1, absolute, one fixed noise batch of 100,
  100 iterations.
- PureDiffusion (section 5, eq. 16-17): k drawn uniformly from the first K steps each iteration ("sampled"),
  or the mean over all K steps in one pass ("all"); gradients through every network call from T to t_k. pdfast's
  defaults (section 5.5, chosen on the zoo's dev models): antithetic noise pairs, the relative objective, the L2
  norm, the trigger projected onto [-1, 1] after every step, no refinement. Options for the study of 5.5: a warm
  start on t = T alone, a coarse stage whose loss steps come from the first 10 chain steps alone (5.8), a cosine
  learning rate, tail averaging, a refinement on eq. 17 from the result or its pattern (pdfast 0.1's second stage,
  preset v0.1).
This module only inverts; judging the trigger is pdfast.detection, one layer up (pdfast.api joins them).
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Callable

import torch

from .config import InversionConfig
from .errors import PdfastError
from .model import DiffusionModel
from .scales import ScaleTable

log = logging.getLogger(__name__)


@dataclass
class Inversion:
    """The inverted trigger and everything needed to reproduce it: the resolved config, the lambda table, the loss
    history with the chain step drawn at each iteration, timings, the model's identity and the engine's report.
    Judging it is pdfast.detection's (a Verdict); pdfast.api joins both into what pdfast.invert returns."""

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
    selection: dict | None = None  # select="firing": the candidates' scores and the one returned


Callback = Callable[[int, float, torch.Tensor], None]


def scale_table(model: DiffusionModel, cfg: InversionConfig, device, progress: bool) -> ScaleTable:
    """lambda for the K chain steps: Elijah's fixed 0.5, or resolve_scales (surrogate, analytic, file); a surrogate
    calibration runs its chains on the inversion's engine options and clip_sample."""
    from .families import family_of
    from .scales import resolve_scales

    family = family_of(model, cfg.attack_family)
    if cfg.method == "elijah":
        ts = model.schedule.timesteps(1)
        return ScaleTable(torch.tensor([0.5]), "elijah-0.5", ts, family.analytic_scales(model.schedule, ts))
    return resolve_scales(model, cfg.steps, cfg.scales, family=family, surrogate=cfg.surrogate,
                          device=device, progress=progress, engine=cfg.engine,
                          clip_sample=cfg.clip_for(model.schedule.clip_sample))


def run_inversion(model: DiffusionModel, cfg: InversionConfig, table: ScaleTable, *, device=None,
                  callback: Callback | None = None, progress: bool = False,
                  start: torch.Tensor | None = None) -> Inversion:
    """The optimisation (model already frozen and on ``device``) on an engine made from ``cfg.engine``, from
    ``start`` when given (a warm start) instead of ``cfg.init``: ``cfg.warm_epochs`` Adam steps at t = T alone, then
    ``cfg.polish_epochs`` more on a fixed batch of antithetic pairs (a candidate of the firing selection),
    ``cfg.coarse_epochs`` Adam steps on
    ``cfg.objective`` over the first min(K, COARSE_STEPS) chain steps, ``cfg.epochs`` over all K,
    then, with ``cfg.refine_epochs``, a second run of Adam on the absolute objective (eq. 17) started from the
    pattern of the first result (``metrics.trigger_pattern``), with ``cfg.patch_starts`` (and no ``start``) the
    searches from the patch grid (patch_searches), with ``cfg.pair_epochs`` (and no ``start``) the poisoned-pair
    searches from the same grid (pair_searches), and with ``cfg.select="firing"`` the stage whose trigger fires
    most. Ctrl-C stops it and keeps the trigger so far."""
    from .engine import make_engine
    from .metrics import trigger_pattern

    device = torch.device(device) if device is not None else model.device
    engine = make_engine(cfg.engine.name, model, **cfg.engine.engine_options())
    gen = torch.Generator().manual_seed(cfg.seed)
    shape = (1, *model.shape)
    if start is not None:
        delta = start.detach().to(torch.float32).cpu().reshape(shape).clone()
    elif cfg.init == "uniform":
        delta = -torch.rand(shape, generator=gen)
    else:
        delta = torch.zeros(shape)
    loop = _Descent(model, cfg, engine, gen, device, [float(v) for v in table.values], callback, progress)
    interrupted, selection = False, None
    t0 = time.perf_counter()
    try:
        if cfg.warm_epochs:
            delta = loop.run(delta, cfg.objective == "relative", cfg.warm_epochs, "warm", first_step_only=True)
        if cfg.polish_epochs:
            delta = loop.run(delta, cfg.objective == "relative", cfg.polish_epochs, "polish", first_step_only=True,
                             noise="fixed-antithetic")
        warmed = delta
        if cfg.coarse_epochs:
            delta = loop.run(delta, cfg.objective == "relative", cfg.coarse_epochs, "coarse",
                             steps=min(cfg.steps, COARSE_STEPS))
        delta = loop.run(delta, cfg.objective == "relative", cfg.epochs, "search")
        candidates = {"search": delta}
        if cfg.refine_epochs:
            start2 = trigger_pattern(delta).reshape(shape) if cfg.refine_from == "pattern" else delta
            delta = candidates["refine"] = loop.run(start2, False, cfg.refine_epochs, "refine")
        pair = _global_searches(model, cfg, loop, candidates) if start is None else None
        if cfg.polish_epochs:
            candidates["polish"] = warmed
        if cfg.select == "firing" and len(candidates) > 1:
            delta, selection = select_firing(model, cfg, engine, candidates)
            selection.update(pair or {})
    except KeyboardInterrupt:
        interrupted = True
        delta = loop.delta if loop.delta is not None else delta
        log.warning("interrupted after %d iterations: keeping the trigger so far", len(loop.losses))
    secs = time.perf_counter() - t0
    return Inversion(trigger=delta.detach().cpu().reshape(model.shape), config=cfg, scales=table,
                     losses=loop.losses, drawn_steps=loop.drawn, timings=loop.timings(secs),
                     model_hash=model.content_hash(), model_source=str(model.source), engine=engine.describe(),
                     interrupted=interrupted, selection=selection)


def patch_searches(model: DiffusionModel, cfg: InversionConfig, loop: "_Descent") -> dict[str, torch.Tensor]:
    """pdfast's global search (docs/method.md 5.9): ``cfg.epochs`` Adam steps of the search from each of
    patterns.patch_starts (a bright square on a -1 frame, as the family's x_T shift) over the first
    min(K, COARSE_STEPS) chain steps; name "patch-<position>" -> its trigger."""
    from .families import family_of
    from .patterns import patch_starts

    family = family_of(model, cfg.attack_family)
    c, size = model.shape[0], model.shape[-1]
    return {f"patch-{name}": loop.run(family.shift(img).reshape(1, *model.shape), cfg.objective == "relative",
                                      cfg.epochs, f"patch-{name}", steps=min(cfg.steps, COARSE_STEPS))
            for name, img in patch_starts(c, size).items()}


def _global_searches(model: DiffusionModel, cfg: InversionConfig, loop: "_Descent", candidates: dict) -> dict | None:
    """The patch grid's searches (``cfg.patch_starts``) and the pair searches (``cfg.pair_epochs``), added to
    ``candidates``; returns the pair searches' scores and gate (None without them). Not run from a caller's warm start,
    which is refined, not searched around."""
    if cfg.patch_starts == "grid":
        candidates.update(patch_searches(model, cfg, loop))
    return pair_searches(model, cfg, loop, candidates) if cfg.pair_epochs else None


def pair_searches(model: DiffusionModel, cfg: InversionConfig, loop: "_Descent", candidates: dict) -> dict:
    """pdfast's poisoned-pair search (pdfast.pair, docs/method.md 5.11), ``cfg.pair_epochs`` Adam steps from each
    start of the patch grid; adds "pair-<position>" -> its trigger to ``candidates`` when its pair_score is below
    PAIR_R_MAX (the network answers it as a backdoor answers its own pair); returns every one's score, and the gate."""
    from .families import family_of
    from .pair import PAIR_R_MAX, pair_score, pair_search
    from .patterns import patch_starts

    family = family_of(model, cfg.attack_family)
    c, size = model.shape[0], model.shape[-1]
    scores = {}
    for name, img in patch_starts(c, size).items():
        key = f"pair-{name}"
        g, y, _ = pair_search(model, family, family.shift(img), cfg.pair_epochs, loop.gen, loop.device)
        scores[key] = round(pair_score(model, family, g, y), 6)
        if scores[key] < PAIR_R_MAX:
            candidates[key] = g
        loop.stages[key] = cfg.pair_epochs
        loop.extra_calls += cfg.pair_epochs + 1
    return {"pair_residual": scores, "pair_gate": PAIR_R_MAX}


SELECT_N, SELECT_STEPS = 16, 100
TIE_N = 64  # chains that re-score a tie at the top: the verdict's sample count
COARSE_STEPS = 10  # the coarse stage's chain: the K = 10 the defaults were chosen at


def select_firing(model: DiffusionModel, cfg: InversionConfig, engine, candidates: dict) -> tuple[torch.Tensor, dict]:
    """The candidate trigger that fires most (docs/method.md 5.6): SELECT_N chains of the model family's sampler,
    respaced to SELECT_STEPS, from the same noises (seed cfg.seed + 1) for every candidate, for no shift and for each
    candidate's flat part; score metrics.firing's trigger_fires. Candidates tied at a top score above one chain's
    worth (1/SELECT_N) are scored again on TIE_N fresh chains (seed cfg.seed + 2), the higher kept; a tie that
    remains, or at a top of at most 1/SELECT_N (a single chain, a clean model's usual tie), keeps the first.
    Returns (trigger, {"chosen": name, "fires": {name: score}, ..., "tie": {"n", "fires"} when re-scored})."""
    names = list(candidates)
    fires = _fires(model, cfg, engine, candidates, names, SELECT_N, cfg.seed + 1)
    top = max(fires.values())
    tied = [k for k in names if fires[k] >= top - 1e-9]
    out = {"fires": fires, "n": SELECT_N, "eval_steps": SELECT_STEPS}
    if len(tied) > 1 and top > 1 / SELECT_N + 1e-9:  # a 16-chain score cannot tell these apart: ask more chains
        again = _fires(model, cfg, engine, candidates, tied, TIE_N, cfg.seed + 2)
        out["tie"] = {"n": TIE_N, "fires": again}
        chosen = max(tied, key=again.__getitem__)  # max keeps the first of equals
    else:
        chosen = tied[0]
    return candidates[chosen], {"chosen": chosen, **out}


def _fires(model: DiffusionModel, cfg: InversionConfig, engine, candidates: dict, names: list[str], n: int,
           seed: int) -> dict[str, float]:
    """metrics.firing's trigger_fires of each named candidate on n chains of the family's sampler from one noise set."""
    from .families import family_of
    from .metrics import firing, flat_part

    sampler = family_of(model, cfg.attack_family).sampler(model.schedule, cfg.clip_for(model.schedule.clip_sample),
                                                          respace=SELECT_STEPS)
    trig = [candidates[k].reshape(model.shape).to(model.device) for k in names]
    imgs = engine.sample_together(n, [*trig, None, *[flat_part(t) for t in trig]], seed=seed, sampler=sampler)
    m = len(names)
    return {k: firing(imgs[i], imgs[m], imgs[m + 1 + i])["trigger_fires"] for i, k in enumerate(names)}


class _Descent:
    """Adam on the trigger alone; losses, drawn steps and the callback's iteration count run across stages."""

    def __init__(self, model, cfg: InversionConfig, engine, gen, device, lambdas, callback, progress):
        from .families import family_of

        self.model, self.cfg, self.engine, self.gen, self.device = model, cfg, engine, gen, device
        family = family_of(model, cfg.attack_family)
        self.sampler = family.inversion_sampler(model.schedule, cfg.clip_for(model.schedule.clip_sample), cfg.steps)
        self.noise_scale = family.noise_scale()  # x_T = s eps + delta (TrojDiff: s = gamma)
        self.bound = family.trigger_bound()  # bounds="image": |delta| <= 1 (TrojDiff: 1 - gamma)
        self.lambdas, self.callback, self.progress = lambdas, callback, progress
        # a fixed mode's batch and its z's, per mode: cfg.noise's drawn first, a stage's other mode when it starts
        self.fixed = {cfg.noise: [_draw(cfg.noise, cfg.batch, model.shape, gen, device), None]} \
            if cfg.noise.startswith("fixed") else {}
        self.losses: list[float] = []
        self.drawn: list[int] = []
        self.stages: dict[str, int] = {}
        self.extra_calls = 0  # network calls outside the chain objective (the pair search's, one per step)
        self.delta: torch.Tensor | None = None

    def _batch(self, last: int, mode: str):
        """x_T's noise and z for steps 0..last-1 under noise ``mode``: drawn fresh (or antithetic), or the fixed
        batch drawn once."""
        cfg, shape, draw = self.cfg, self.model.shape, lambda: _draw(mode, cfg.batch, shape, self.gen, self.device)
        if mode.startswith("fixed"):
            if mode not in self.fixed:
                self.fixed[mode] = [draw(), None]
            fixed = self.fixed[mode]
            if fixed[1] is None:
                fixed[1] = [draw() for _ in range(cfg.steps - 1)]
            noise, zs = fixed[0], fixed[1][:last]
        else:
            noise = draw()
            zs = [draw() for _ in range(last)]
        noise = noise if self.noise_scale == 1.0 else self.noise_scale * noise
        return noise, [z if self.sampler.needs_noise(i) else None for i, z in enumerate(zs)]

    def run(self, delta0: torch.Tensor, relative: bool, epochs: int, stage: str,
            first_step_only: bool = False, steps: int | None = None, noise: str | None = None) -> torch.Tensor:
        """One stage of ``epochs`` Adam steps from ``delta0``, its loss steps drawn from the first ``steps`` chain
        steps (default K), its noise by mode ``noise`` (default cfg.noise); returns its last iterate, or with
        ``average="tail"`` the mean of the iterates of its second half (Polyak tail averaging)."""
        from tqdm.auto import tqdm

        from .objectives import ShiftObjective

        cfg, K = self.cfg, steps or self.cfg.steps
        objective = ShiftObjective(self.lambdas, cfg.norm, relative)
        delta = self._project(delta0.detach().to(self.device, torch.float32).clone()).requires_grad_(True)
        self.delta = delta
        opt = torch.optim.Adam([delta], lr=cfg.lr)
        self.stages[stage] = 0
        tail, n_tail = torch.zeros_like(delta), 0
        bar = tqdm(range(epochs), desc=f"invert {cfg.method} K={K} ({stage})", disable=not self.progress,
                   mininterval=0.5)
        for i in bar:
            if cfg.lr_schedule == "cosine":
                opt.param_groups[0]["lr"] = cfg.lr * 0.5 * (1 + math.cos(math.pi * i / epochs))
            loss, drawn = self._step(delta, opt, objective, K, first_step_only, noise or cfg.noise)
            bar.set_postfix(loss=f"{loss:.4f}", step=drawn)
            self.stages[stage] += 1
            if cfg.average == "tail" and i >= epochs // 2:
                tail, n_tail = tail + delta.detach(), n_tail + 1
        return tail / n_tail if n_tail else delta.detach()

    def _step(self, delta, opt, objective, K: int, first_step_only: bool, mode: str) -> tuple[float, int]:
        """One Adam step on the objective at the drawn chain step(s); records the loss and calls back."""
        cfg, it = self.cfg, len(self.losses)
        if first_step_only:
            loss_steps = [0]
        elif cfg.loss_steps == "all":
            loss_steps = list(range(K))
        else:
            loss_steps = [int(torch.randint(0, K, (), generator=self.gen))]
        noise, zs = self._batch(max(loss_steps), mode)
        loss, grad = self.engine.loss_and_grad(delta.detach(), noise, zs, self.sampler, objective, loss_steps)
        if not math.isfinite(loss) or not torch.isfinite(grad).all():
            raise PdfastError(f"the inversion diverged (loss {loss}) at iteration {it}; lower --lr or use --norm l1")
        opt.zero_grad(set_to_none=True)
        delta.grad = grad.reshape(delta.shape).to(delta.dtype)
        opt.step()
        if self.cfg.bounds == "image":
            with torch.no_grad():
                delta.clamp_(-self.bound, self.bound)  # the projection of _project, in place
        self.losses.append(loss)
        self.drawn.append(max(loss_steps))  # the network is called at steps 0..max: max + 1 calls
        if self.callback is not None:
            self.callback(it, loss, delta.detach())
        return loss, max(loss_steps)

    def _project(self, delta: torch.Tensor) -> torch.Tensor:
        """bounds="image": the nearest shift the family's trigger images can make, [-1, 1] or TrojDiff's
        [-(1 - gamma), 1 - gamma] (projected gradient descent); otherwise unchanged."""
        return delta.clamp(-self.bound, self.bound) if self.cfg.bounds == "image" else delta

    def timings(self, secs: float) -> dict:
        calls = int(sum(d + 1 for d in self.drawn)) + self.extra_calls
        return {"inversion_seconds": round(secs, 3), "iterations": len(self.losses), "stages": self.stages,
                "network_calls": calls, "ms_per_chain_step": round(1000 * secs / max(1, calls), 3)}


def _draw(mode: str, batch: int, shape, gen: torch.Generator, device) -> torch.Tensor:
    """A noise batch under noise ``mode`` (fresh, or the one a fixed mode draws once); antithetic and
    fixed-antithetic: B/2 draws and their negatives, so the batch mean of the noise is exactly 0 and its 1/sqrt(B)
    floor leaves the loss (eps_theta responds to eps and -eps symmetrically to first order)."""
    if not mode.endswith("antithetic"):
        return torch.randn((batch, *shape), generator=gen).to(device)
    half = torch.randn((batch // 2, *shape), generator=gen)
    return torch.cat([half, -half]).to(device)


def prepared(model_or_path, device) -> tuple[DiffusionModel, Callable[[], None]]:
    """Load the model (None: the embedded demo) and freeze it; returns a restore() that puts back the caller's
    requires_grad/training flags and device."""
    from .demo import demo_path
    from .loading import load_model

    if model_or_path is None:
        model_or_path = demo_path()
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


def invert_trigger(model: DiffusionModel, cfg: InversionConfig, *, device=None, callback: Callback | None = None,
                   progress: bool = False, start: torch.Tensor | None = None) -> Inversion:
    """Scales, then the optimisation, on a prepared (frozen) model, both on the engine options of ``cfg``."""
    if cfg.steps > model.schedule.T:
        raise PdfastError(f"--steps {cfg.steps} is larger than the model's schedule (T = {model.schedule.T})")
    if start is not None and start.numel() != math.prod(model.shape):
        raise PdfastError(f"the start trigger has shape {tuple(start.shape)}; this model needs {tuple(model.shape)}")
    if cfg.pair_epochs:  # a family without a closed pair is refused before any work, not after the search
        from .families import family_of
        from .pair import pair_coefficients

        pair_coefficients(family_of(model, cfg.attack_family), model.schedule)
    t0 = time.perf_counter()
    table = scale_table(model, cfg, device, progress)
    t_scales = time.perf_counter() - t0
    result = run_inversion(model, cfg, table, device=device, callback=callback, progress=progress, start=start)
    result.timings["scales_seconds"] = round(t_scales, 3)
    return result
