"""Trigger-shift scales lambda_t for the first K chain steps (docs/method.md sections 3 and 5).

Three sources:
- ``surrogate`` (the paper's method): backdoor a COPY of the suspect model with a surrogate trigger delta_s,
  run its chain from eps + delta_s and solve min_l ||m_t - l delta_s||^2 per step (eq. 14-15):
  lambda_t = <m_t, delta_s> / <delta_s, delta_s>,  m_t = mean_b eps_theta(x_t, t).
- ``analytic``: lambda_t = rho_t = (1 - sqrt(alpha_t)) sqrt(1 - abar_t) / beta_t (x2 for ODE-sampler backdoors).
- a JSON file holding a saved table.
Calibrated tables are cached per model content hash, K and calibration settings. The chains of a calibration (the
surrogate's image pool, the estimate along its chain) run on an engine made from the run's engine options
(pdfast.config.EngineConfig: dtype, compile) with the run's clip_sample, like the inversion itself.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .config import EngineConfig, SurrogateConfig
from .errors import PdfastError
from .families import AttackFamily
from .model import DiffusionModel

log = logging.getLogger(__name__)

# Bump when anything that computes a surrogate table changes its numbers (the chain, the attack, the estimate), so
# that a table cached by older code is not reused.
CALIBRATION_VERSION = 2


@dataclass
class ScaleTable:
    """lambda for chain steps k = 0..K-1 (t = T-1-k), where it came from, and the analytic table beside it."""

    values: torch.Tensor
    source: str
    timesteps: list[int]
    analytic: torch.Tensor
    cached: bool = False
    info: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "cached": self.cached,
            "timesteps": self.timesteps,
            "lambda": [round(float(v), 6) for v in self.values],
            "analytic": [round(float(v), 6) for v in self.analytic],
            **({"calibration": self.info} if self.info else {}),
        }


def cache_dir() -> Path:
    """$PDFAST_CACHE_DIR, else $XDG_CACHE_HOME/pdfast, else ~/.cache/pdfast."""
    if os.environ.get("PDFAST_CACHE_DIR"):
        return Path(os.environ["PDFAST_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pdfast"


@torch.no_grad()
def estimate_scales(model: DiffusionModel, delta: torch.Tensor, k: int, *, batch: int = 64, seed: int = 0,
                    device=None, engine: EngineConfig = EngineConfig(), clip_sample: bool | None = None,
                    family: AttackFamily = AttackFamily(), sampler=None) -> torch.Tensor:
    """Least-squares shift scale per step along the family's inversion chain from x_T = s eps + delta (eq. 15; s = 1,
    TrojDiff's gamma), the network called through an engine made from ``engine`` (clip_sample None: the scheduler
    config's): lambda_i = <mean_b eps_theta(x_i, t_i), delta> / <delta, delta>. ``sampler``: walk the first k steps
    of that chain instead (e.g. a respaced DDPM chain; ``clip_sample`` is then the sampler's own)."""
    from . import chain
    from .engine import make_engine
    from .kernels import lstsq_scale

    device = device or model.device
    eps_fn = make_engine(engine.name, model, **engine.engine_options()).eps_nograd
    noise = chain.GeneratorNoise(torch.Generator().manual_seed(seed), device)
    d = delta.to(device).reshape(model.shape)
    x = noise.initial((batch, *model.shape))
    x = (x if family.noise_scale() == 1.0 else family.noise_scale() * x) + d.reshape(1, *model.shape)
    out: list[float] = []
    if sampler is None:
        clip = model.schedule.clip_sample if clip_sample is None else clip_sample
        sampler = family.inversion_sampler(model.schedule, clip, k)
    elif k > len(sampler.timesteps):
        raise PdfastError(f"k = {k} exceeds the given sampler's {len(sampler.timesteps)} steps; use k <= "
                          f"{len(sampler.timesteps)}")
    chain.run(eps_fn, x, sampler, noise, n=k, update_last=False,
              callback=lambda i, x, eps: out.append(float(lstsq_scale(eps.float(), d))))
    return torch.tensor(out, dtype=torch.float32)


def surrogate_scales(model: DiffusionModel, k: int, cfg: SurrogateConfig = SurrogateConfig(), *,
                     device=None, progress: bool = False, engine: EngineConfig = EngineConfig(),
                     clip_sample: bool | None = None,
                     family: AttackFamily = AttackFamily()) -> tuple[torch.Tensor, dict]:
    """Plant (cfg.trigger -> cfg.target) in a copy of ``model`` with the family's own objective (on images the model
    generates itself with DDIM unless ``cfg.data`` is a folder) and estimate lambda along the family's inversion
    chain, both chains on ``engine``'s options; ``model`` itself is never modified."""
    from .attack import AttackConfig, plant_backdoor
    from .patterns import load_pattern
    from .train import TrainConfig

    if not isinstance(model.net, torch.nn.Module):
        raise PdfastError("surrogate calibration fine-tunes a copy of the network, which needs a torch module; "
                          "use --scales analytic or a saved table for a plain callable")
    device = device or model.device
    t0 = time.perf_counter()
    g = load_pattern(cfg.trigger, model.sample_size, model.channels, kind="trigger")
    y = load_pattern(cfg.target, model.sample_size, model.channels, kind="target")
    images, data_desc = _surrogate_data(model, cfg, engine)
    t_pool = time.perf_counter() - t0
    acfg = AttackConfig(poison_rate=cfg.poison_rate, train=TrainConfig(
        steps=cfg.steps, batch=cfg.batch, lr=cfg.lr, warmup=max(1, cfg.steps // 10), seed=cfg.seed))
    surrogate = plant_backdoor(model, images, g, y, acfg, device=device, progress=progress, family=family).frozen()
    t_attack = time.perf_counter() - t0 - t_pool
    lam = estimate_scales(surrogate, family.shift(g), k, batch=cfg.calib_batch, seed=cfg.seed, device=device,
                          engine=engine, clip_sample=clip_sample, family=family)
    info = {**asdict(cfg), "data": data_desc, "seconds_pool": round(t_pool, 2), "seconds_attack": round(t_attack, 2),
            "seconds_total": round(time.perf_counter() - t0, 2)}
    del surrogate
    return lam, info


def _surrogate_data(model: DiffusionModel, cfg: SurrogateConfig, engine: EngineConfig) -> tuple[torch.Tensor, str]:
    """The surrogate's clean images and what they are: a --data folder, or cfg.n_images DDIM samples of the
    suspect model drawn on the engine."""
    from .chain import DDIMSampler
    from .data import get_data
    from .engine import make_engine

    if cfg.data is not None:
        return get_data(cfg.data, model.sample_size, model.channels), str(cfg.data)
    eng = make_engine(engine.name, model, **engine.engine_options())
    images = eng.sample(cfg.n_images, seed=cfg.seed, sampler=DDIMSampler(model.schedule, cfg.pool_steps))
    return images, f"{cfg.n_images} DDIM-{cfg.pool_steps} samples of the suspect model"


def load_scales_file(path: str | Path, k: int) -> torch.Tensor:
    """A saved table: JSON list, or an object with 'lambda' (as in report.json's 'scales'); at least k values."""
    from .io import read_user_json

    p = Path(path)
    obj = read_user_json(p, "--scales", missing="use surrogate, analytic or a JSON table file",
                         unreadable="is not a readable JSON table ({reason}); expected a list of numbers")
    vals = obj.get("lambda") if isinstance(obj, dict) else obj
    if isinstance(obj, dict) and vals is None and "scales" in obj:
        vals = obj["scales"].get("lambda")
    if not isinstance(vals, list) or not all(isinstance(v, (int, float)) for v in vals):
        raise PdfastError(f"--scales {p} holds no list of numbers (a JSON list or {{\"lambda\": [...]}})")
    if len(vals) < k:
        raise PdfastError(f"--scales {p} has {len(vals)} values but --steps is {k}; calibrate for {k} steps")
    t = torch.tensor(vals[:k], dtype=torch.float32)
    if not torch.isfinite(t).all():
        raise PdfastError(f"--scales {p} contains NaN or infinite values")
    return t


def resolve_scales(model: DiffusionModel, k: int, spec: str = "surrogate", *,
                   family: AttackFamily = AttackFamily(), surrogate: SurrogateConfig = SurrogateConfig(), device=None,
                   progress: bool = False, use_cache: bool = True, engine: EngineConfig = EngineConfig(),
                   clip_sample: bool | None = None) -> ScaleTable:
    """The lambda table for the first k steps of the family's inversion chain from ``spec`` (surrogate | analytic |
    path), with the family's analytic table beside it; a surrogate calibration plants the family's own backdoor and
    runs on ``engine``'s options with ``clip_sample`` (None: the scheduler config's)."""
    clip = model.schedule.clip_sample if clip_sample is None else clip_sample
    ts = list(family.inversion_sampler(model.schedule, clip, k).timesteps)
    analytic = family.analytic_scales(model.schedule, ts)
    if spec == "analytic":
        return ScaleTable(analytic.clone(), f"analytic-{family.describe()}", ts, analytic)
    if spec != "surrogate":
        return ScaleTable(load_scales_file(spec, k), f"file:{spec}", ts, analytic)
    key = _cache_key(model, k, surrogate, engine, clip_sample)
    if family != AttackFamily():
        key += "-" + hashlib.sha256(family.describe().encode()).hexdigest()[:8]
    f = cache_dir() / "scales" / f"{key}.json"
    if use_cache and f.is_file():
        try:
            obj = json.loads(f.read_text())
            log.info("using cached surrogate scales %s", f)
            return ScaleTable(torch.tensor(obj["lambda"], dtype=torch.float32), "surrogate", ts, analytic,
                              cached=True, info={**obj.get("calibration", {}), "cache_file": str(f)})
        except (OSError, ValueError, KeyError):
            log.warning("ignoring unreadable scale cache %s", f)
    lam, info = surrogate_scales(model, k, surrogate, device=device, progress=progress, engine=engine,
                                 clip_sample=clip_sample, family=family)
    info = {**info, "family": family.describe()}
    if not torch.isfinite(lam).all():
        raise PdfastError("surrogate calibration produced non-finite scales; use --scales analytic")
    if use_cache:
        info = _write_cache(f, lam, info, k, model)
    return ScaleTable(lam, "surrogate", ts, analytic, info=info)


def _cache_key(model: DiffusionModel, k: int, surrogate: SurrogateConfig, engine: EngineConfig,
               clip_sample: bool | None) -> str:
    """Model content hash, K, every surrogate setting (a --data folder's files too) and CALIBRATION_VERSION (the
    calibration's arithmetic); then what else changes the numbers where it differs from the plain case: another
    clip_sample than the scheduler config's, a network precision other than fp32 or a compiled network."""
    key = f"{model.content_hash()}-K{k}-{surrogate.key()}-v{CALIBRATION_VERSION}"
    if clip_sample is not None and clip_sample != model.schedule.clip_sample:
        key += f"-clip{int(clip_sample)}"
    dtype, compiled = engine.arithmetic(model.device.type == "cuda")
    return key + ("" if dtype == "float32" else f"-{dtype}") + ("-compiled" if compiled else "")


def _write_cache(f: Path, lam: torch.Tensor, info: dict, k: int, model: DiffusionModel) -> dict:
    """Store a calibrated table; a read-only home only logs a warning. Returns ``info`` with the cache file."""
    from .io import atomic_write_json

    try:
        atomic_write_json(f, {"lambda": lam.tolist(), "calibration": info, "k": k, "model_hash": model.content_hash()})
        return {**info, "cache_file": str(f)}
    except OSError as e:  # a read-only home must not stop the run
        log.warning("cannot write the scale cache %s: %s", f, e)
        return info
