"""The denoising chain: samplers, the noise they consume, and the only loops over timesteps in pdfast.

A chain starts at x_T = eps + delta (the trigger delta, 0 for clean sampling) and applies a sampler's step
x_{i+1} = step_i(x_i, eps_theta(x_i, t_i), z_i) (docs/method.md section 1). Everything that walks down a chain
(sampling, the surrogate's lambda estimate, the engines' forward and backward passes) calls ``run``, ``unroll`` or
``walk_back`` here with its own per-step function, so a new sampler (DDIM now, others later) or a new way of
executing the chain is written once. The noise is explicit: ``GeneratorNoise`` draws x_T's noise and then z_i step
by step from one CPU generator (so a chain can be replayed exactly), ``ReplayNoise`` hands out given tensors.
"""
from __future__ import annotations

import math
from typing import Callable, Protocol, Sequence

import torch

from .errors import PdfastError
from .schedule import Schedule

EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# ---------------------------------------------------------------- samplers
class Sampler(Protocol):
    """One reverse-process update per chain index i (timestep ``timesteps[i]``), owned by the sampler with its
    coefficients: ``step`` runs it eagerly, ``step_from_row`` runs the same update from a tensor row of ``rows``
    (one float64 row of ``row_width`` coefficients per step), the form one captured CUDA graph replays for every
    step. ``graph_key`` is what such a captured step depends on besides the shapes (the sampler and its clipping)."""

    timesteps: list[int]
    row_width: int
    graph_key: tuple

    def needs_noise(self, i: int) -> bool: ...

    def step(self, i: int, x: torch.Tensor, eps: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor: ...

    def rows(self, n: int) -> torch.Tensor: ...

    def step_from_row(self, x: torch.Tensor, eps: torch.Tensor, row: torch.Tensor,
                      z: torch.Tensor | None) -> torch.Tensor: ...


ROW_KEYS = ("c1", "c2", "sigma", "sqrt_abar", "sqrt_one_minus_abar", "a0", "at")


def ddpm_clipped_step(x: torch.Tensor, eps: torch.Tensor, c, z: torch.Tensor | None,
                      clip_range: float) -> torch.Tensor:
    """The DDPM step in its x0 form with clip_sample: x0 = clamp((x_t - sqrt(1-abar_t) eps)/sqrt(abar_t)),
    x_{t-1} = a0 x0 + at x_t + sigma_t z, with ``c`` the coefficients in ROW_KEYS order (floats or a tensor row)."""
    x0 = ((x - c[4] * eps) / c[3]).clamp(-clip_range, clip_range)
    mean = c[5] * x0 + c[6] * x
    return mean if z is None else mean + c[2] * z


class DDPMSampler:
    """The ancestral DDPM step x_{t-1} = c1 (x_t - c2 eps) + sigma_t z, c1 = 1/sqrt(alpha_t), c2 = beta_t/sqrt(1-abar_t)
    (Ho et al. 2020 Alg. 2); with clip_sample the x0 form of ``ddpm_clipped_step`` (docs/method.md section 1).
    ``respace`` n < T: the same ancestral step over n evenly spaced timesteps tau_1 < ... < tau_n, with the betas
    beta'_i = 1 - abar_tau_i / abar_tau_(i-1) that keep every marginal abar_tau (Schedule.respaced; the verdict's
    short chain, docs/method.md section 7).

    ``clip_sample``: None takes the scheduler config's (``schedule.clip_sample``). The unclipped step runs the fused
    ``ddpm_update`` op (pdfast.kernels: native, Triton or its torch reference ``ddpm_update_ref``, the one torch
    form of the step), and ``ddpm_update_row`` from a row; the coefficients are the schedule's
    (``step_coefficients``), one row per chain step.
    """

    row_width = len(ROW_KEYS)

    def __init__(self, schedule: Schedule, steps: int | None = None, clip_sample: bool | None = None,
                 respace: int | None = None):
        self.clip = schedule.clip_sample if clip_sample is None else bool(clip_sample)
        self.clip_range = float(schedule.clip_sample_range)
        self.graph_key = ("ddpm", self.clip, self.clip_range)
        if respace is not None and respace < schedule.T:  # the ancestral chain over fewer, evenly spaced timesteps
            if steps is not None:
                raise PdfastError("a respaced DDPM chain runs all its steps; give steps or respace, not both")
            sub, kept = schedule.respaced(respace)
            coef, idx = sub.step_coefficients(), list(range(respace - 1, -1, -1))
            self.timesteps = [kept[i] for i in idx]
        else:
            self.timesteps = schedule.timesteps(steps)
            coef, idx = schedule.step_coefficients(), self.timesteps
        ts = torch.as_tensor(idx, dtype=torch.long)
        self._rows = torch.stack([coef[k][ts] for k in ROW_KEYS], dim=1)  # (steps, 7) float64
        self._coef = self._rows.tolist()  # python floats: the eager step costs no tensor op per coefficient

    def needs_noise(self, i: int) -> bool:
        return self.timesteps[i] > 0

    def step(self, i: int, x: torch.Tensor, eps: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
        c, z = self._coef[i], z if self.timesteps[i] > 0 else None
        if self.clip:
            return ddpm_clipped_step(x, eps, c, z, self.clip_range)
        from .kernels import ddpm_update

        return ddpm_update(x, eps, c[0], c[1], c[2], noise=z)

    def rows(self, n: int) -> torch.Tensor:
        """(n, 7) float64 coefficients c1, c2, sigma, sqrt_abar, sqrt_1m_abar, a0, at (ROW_KEYS) of the first n
        steps."""
        return self._rows[:n]

    def step_from_row(self, x: torch.Tensor, eps: torch.Tensor, row: torch.Tensor,
                      z: torch.Tensor | None) -> torch.Tensor:
        """``step`` with its coefficients in a tensor row, read on the device (no host sync: the fast engine's CUDA
        graph replays it for every step): the fused ``ddpm_update_row`` (Triton where the kernel backend is Triton,
        else its torch reference); the clipped step is its torch formula on every backend."""
        if self.clip:
            return ddpm_clipped_step(x, eps, row, z, self.clip_range)
        from .kernels import ddpm_update_row

        return ddpm_update_row(x, eps, row, noise=z)


class DDIMSampler:
    """Deterministic DDIM (eta = 0) on ``steps`` evenly spaced timesteps:
    x0_hat = clamp((x_t - sqrt(1-abar_t) eps)/sqrt(abar_t)), x_s = sqrt(abar_s) x0_hat + sqrt(1-abar_s) eps; the last
    step returns x0_hat. Its rows are (sqrt(1-abar_t), sqrt(abar_t), sqrt(abar_s), sqrt(1-abar_s)) in float32, with
    (1, 0) for the s after the last step."""

    row_width = 4
    graph_key = ("ddim",)

    def __init__(self, schedule: Schedule, steps: int = 100, first: int | None = None):
        """``first``: keep only the first steps of the ``steps``-step chain (an inversion's K steps)."""
        T = schedule.T
        timesteps = torch.linspace(T - 1, 0, steps).round().long().tolist()
        ab = schedule.abar.to(torch.float32)
        ab_t = ab[timesteps]
        ab_s = torch.cat([ab[timesteps[1:]], ab.new_ones(1)])
        self._rows = torch.stack([(1 - ab_t).sqrt(), ab_t.sqrt(), ab_s.sqrt(), (1 - ab_s).sqrt()], dim=1)
        self._final = len(timesteps)
        self.timesteps = timesteps[:first]

    def needs_noise(self, i: int) -> bool:
        return False

    def step(self, i: int, x: torch.Tensor, eps: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        row = self._rows[i]
        if i + 1 == self._final:
            return _ddim_x0(x, eps, row)
        return self.step_from_row(x, eps, row)

    def rows(self, n: int) -> torch.Tensor:
        """(n, 4) float64 coefficients of the first n steps (their float32 values)."""
        return self._rows[:n].to(torch.float64)

    def step_from_row(self, x: torch.Tensor, eps: torch.Tensor, row: torch.Tensor,
                      z: torch.Tensor | None = None) -> torch.Tensor:
        return row[2] * _ddim_x0(x, eps, row) + row[3] * eps


def _ddim_x0(x: torch.Tensor, eps: torch.Tensor, row) -> torch.Tensor:
    return ((x - row[0] * eps) / row[1]).clamp(-1, 1)


class TrojDiffSampler:
    """TrojDiff's backdoored DDPM step (docs/method.md section 2c), per image b with its shift mu_b and noise-scale
    map G_b (gamma in TrojDiff's region, 1 elsewhere; mu = 0 and G = 1 for plain noise, the clipped DDPM step):
    x0 = clamp((x_t - sqrt(1-abar_t)(G eps + mu))/sqrt(abar_t)), x_{t-1} = a0 x0 + at x_t + m_t mu + G sigma_t z,
    m_t = (sqrt(1-abar_{t-1}) beta_t - (1-abar_{t-1}) sqrt(alpha_t) k_t) / (1 - abar_t). ``start`` builds x_T = G eps +
    mu for each trigger (mu) and keeps mu_b and G_b for the steps: one sampler serves one chain at a time."""

    row_width = len(ROW_KEYS) + 1
    graph_key = ("trojdiff",)

    def __init__(self, schedule: Schedule, gamma: float, steps: int | None = None, mask: torch.Tensor | None = None):
        from .schedule import trojdiff_mu_coefficient

        self.timesteps = schedule.timesteps(steps)
        self.gamma, self.mask = float(gamma), mask
        coef = schedule.step_coefficients()
        ts = torch.as_tensor(self.timesteps, dtype=torch.long)
        m = trojdiff_mu_coefficient(schedule) / (1 - schedule.abar.to(torch.float64))
        self._rows = torch.cat([torch.stack([coef[k][ts] for k in ROW_KEYS], dim=1), m[ts, None]], dim=1)
        self._coef = self._rows.tolist()
        self._mu: torch.Tensor | float = 0.0
        self._g: torch.Tensor | float = 1.0

    def start(self, noise: torch.Tensor, triggers: Sequence[torch.Tensor | None]) -> torch.Tensor:
        """x_T for each trigger (mu) on the same noise, stacked; remembers every image's mu and G."""
        mus, gs = [], []
        for trig in triggers:
            if trig is None:
                mus.append(torch.zeros_like(noise))
                gs.append(torch.ones_like(noise))
                continue
            region = torch.ones_like(noise) if self.mask is None else self.mask.to(noise).expand_as(noise)
            mus.append((trig.to(noise).reshape(1, *noise.shape[1:]) * region).expand_as(noise))
            gs.append(1 + (self.gamma - 1) * region)
        self._mu, self._g = torch.cat(mus), torch.cat(gs)
        return self._g * torch.cat([noise] * len(triggers)) + self._mu

    def needs_noise(self, i: int) -> bool:
        return self.timesteps[i] > 0

    def step(self, i: int, x: torch.Tensor, eps: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
        return self.step_from_row(x, eps, self._coef[i], z if self.timesteps[i] > 0 else None)

    def rows(self, n: int) -> torch.Tensor:
        """(n, 8) float64: ROW_KEYS, then m_t."""
        return self._rows[:n]

    def step_from_row(self, x: torch.Tensor, eps: torch.Tensor, row, z: torch.Tensor | None) -> torch.Tensor:
        mu, g = self._mu, self._g
        x0 = ((x - row[4] * (g * eps + mu)) / row[3]).clamp(-1, 1)
        mean = row[5] * x0 + row[6] * x + row[7] * mu
        return mean if z is None else mean + g * row[2] * z


# ---------------------------------------------------------------- noise
class GeneratorNoise:
    """x_T's noise, then one z_i per noisy step, drawn in chain order from one CPU generator (replayable by seed).

    torch.randn of shape (k, *S) from a CPU generator equals k successive draws of shape S when S has a multiple of
    16 elements (the vectorised normal fill works in blocks of 16; tested), so on CUDA the z_i come in chunks of
    ``chunk`` through one pinned, non-blocking copy instead of one blocking copy per step.
    """

    def __init__(self, gen: torch.Generator, device: torch.device | str = "cpu", chunk: int | None = None):
        self.gen, self.device = gen, torch.device(device)
        self.chunk = chunk if chunk is not None else (64 if self.device.type == "cuda" else 1)
        self.buf: list[torch.Tensor] = []
        self.left = 0

    def initial(self, shape: Sequence[int]) -> torch.Tensor:
        """The noise eps of x_T = eps + delta (drops any z_i buffered for an earlier chain)."""
        self.buf = []
        return torch.randn(tuple(shape), generator=self.gen).to(self.device)

    def plan(self, n_draws: int) -> None:
        """Say how many z_i the chain will draw, so that chunks never draw past the chain's end."""
        self.left = n_draws

    def z(self, i: int, shape: Sequence[int]) -> torch.Tensor:
        shape = tuple(shape)
        if not self.buf:
            k = min(self.chunk, self.left) if math.prod(shape) % 16 == 0 else 1
            if k <= 1:
                self.left -= 1
                return torch.randn(shape, generator=self.gen).to(self.device)
            block = torch.randn((k, *shape), generator=self.gen)
            if self.device.type == "cuda":
                block = block.pin_memory()
            self.buf = list(block.to(self.device, non_blocking=True).unbind(0))
        self.left -= 1
        return self.buf.pop(0)


class ReplayNoise:
    """Given noise: x_T's ``noise`` and ``zs[i]`` for step i (None where the step adds none)."""

    def __init__(self, noise: torch.Tensor, zs: Sequence[torch.Tensor | None]):
        self.noise, self.zs = noise, list(zs)

    def initial(self, shape=None) -> torch.Tensor:
        return self.noise

    def z(self, i: int, shape=None) -> torch.Tensor | None:
        z = self.zs[i] if i < len(self.zs) else None
        return None if z is None else z.to(self.noise.device, torch.float32, non_blocking=True)


# ---------------------------------------------------------------- the loops
StepCallback = Callable[[int, torch.Tensor, torch.Tensor], None]


def run(eps_fn: EpsFn, x: torch.Tensor, sampler: Sampler, noise, *, n: int | None = None, update_last: bool = True,
        callback: StepCallback | None = None) -> torch.Tensor:
    """Walk n chain steps from x: eps_i = eps_fn(x_i, t_i), callback(i, x_i, eps_i),
    x_{i+1} = sampler.step(i, x_i, eps_i, z_i).

    z_i is drawn from ``noise`` only for steps that add noise and are applied; with ``update_last`` False the
    n-th update (and its z) is skipped and x_{n-1} is returned.
    """
    n = len(sampler.timesteps) if n is None else n
    t_dev = torch.as_tensor(sampler.timesteps[:n], dtype=torch.long, device=x.device)
    for i in range(n):
        eps = eps_fn(x, t_dev[i])
        if callback is not None:
            callback(i, x, eps)
        if i + 1 < n or update_last:
            z = noise.z(i, x.shape) if sampler.needs_noise(i) else None
            x = sampler.step(i, x, eps, z)
    return x


def unroll(step: Callable[[int, torch.Tensor], torch.Tensor], x0: torch.Tensor, n: int) -> list[torch.Tensor]:
    """States x_0..x_n of x_{i+1} = step(i, x_i) (an engine's forward pass that stores the chain for its backward)."""
    states = [x0]
    for i in range(n):
        states.append(step(i, states[-1]))
    return states


def walk_back(vjp: Callable[[int, torch.Tensor | None], torch.Tensor], last: int) -> torch.Tensor:
    """The adjoint a_i = vjp(i, a_{i+1}) from i = last down to 0 (a_{last+1} = None); returns a_0 = dL/dx_0."""
    a = None
    for i in range(last, -1, -1):
        a = vjp(i, a)
    return a


def sample(eps_fn: EpsFn, sampler: Sampler, shape: Sequence[int], n: int, *, trigger: torch.Tensor | None = None,
           seed: int = 0, batch: int = 64, device: torch.device | str = "cpu", progress: bool = False,
           clamp: bool = True, callback: StepCallback | None = None) -> torch.Tensor:
    """n images of the chain x_T = eps + trigger (docs/method.md section 1), in batches, on CPU; in [-1, 1] with
    ``clamp``. One generator per call: batch b's x_T noise, then its z_i, then batch b+1's. ``callback(i, x, eps)``
    is called at every step."""
    return sample_together(eps_fn, sampler, shape, n, [trigger], seed=seed, batch=batch, device=device,
                           progress=progress, clamp=clamp, callback=callback)[0]


@torch.no_grad()
def sample_together(eps_fn: EpsFn, sampler: Sampler, shape: Sequence[int], n: int,
                    triggers: Sequence[torch.Tensor | None], *, seed: int = 0, batch: int = 64,
                    device: torch.device | str = "cpu", progress: bool = False, clamp: bool = True,
                    callback: StepCallback | None = None) -> list[torch.Tensor]:
    """``sample`` for several triggers from the same noise, as one chain: each batch of b noises runs as one
    network batch of len(triggers) * b (every trigger sees the same eps and z_i). Image j of trigger k equals
    ``sample(..., trigger=triggers[k])``'s image j: the same draws in the same order (per-image network results do
    not depend on the batch they run in, tested), at fewer, larger network calls."""
    from tqdm.auto import tqdm

    device = torch.device(device)
    noise = GeneratorNoise(torch.Generator(device="cpu").manual_seed(seed), device)
    n_noisy = sum(1 for i in range(len(sampler.timesteps)) if sampler.needs_noise(i))
    k = len(triggers)
    out: list[list[torch.Tensor]] = [[] for _ in triggers]
    for start in range(0, n, batch):
        b = min(batch, n - start)
        x0 = noise.initial((b, *shape))
        if hasattr(sampler, "start"):  # a sampler with its own x_T (TrojDiff: gamma eps + mu)
            x = sampler.start(x0, [None if g is None else g.to(device, x0.dtype) for g in triggers])
        else:
            x = torch.cat([x0 if g is None else x0 + g.to(device, x0.dtype).reshape(1, *shape) for g in triggers])
        noise.plan(n_noisy)
        bar = tqdm(total=len(sampler.timesteps), desc=f"sample {start + b}/{n}" + (f" x{k}" if k > 1 else ""),
                   disable=not progress, mininterval=1.0, leave=False)
        x = run(eps_fn, x, sampler, _Tiled(noise, k), callback=_progress(bar, callback))
        bar.close()
        for j, part in enumerate(x.chunk(k)):
            out[j].append((part.clamp(-1, 1) if clamp else part).cpu())
    return [torch.cat(o) for o in out]


class _Tiled:
    """One noise stream for k copies of a batch: each z_i drawn once (at the copy's shape) and repeated k times."""

    def __init__(self, noise: GeneratorNoise, k: int):
        self.noise, self.k = noise, k

    def z(self, i: int, shape: Sequence[int]) -> torch.Tensor:
        shape = tuple(shape)
        z = self.noise.z(i, (shape[0] // self.k, *shape[1:]))
        return z if self.k == 1 else torch.cat([z] * self.k)


def _progress(bar, callback: StepCallback | None) -> StepCallback:
    def on_step(i, x, eps):
        bar.update()
        if callback is not None:
            callback(i, x, eps)
    return on_step
