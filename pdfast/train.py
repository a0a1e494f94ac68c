"""Clean DDPM training from scratch, and the training loop the BadDiffusion attack shares.

The loss is the DDPM simple loss MSE(eps_theta(sqrt(abar_t) x0 + sqrt(1-abar_t) eps, t), eps).
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from dataclasses import asdict, dataclass
from typing import Callable

import torch

from .errors import PdfastError
from .model import DiffusionModel
from .schedule import Schedule

# UNet presets, as data. "demo" is the embedded demo model's architecture: small enough that a
# 1000-step chain of 16 images runs in well under a minute on 2 CPU cores.
UNET_PRESETS: dict[str, dict] = {
    "tiny": dict(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
                 down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D")),
    "demo": dict(block_out_channels=(16, 32, 64), layers_per_block=1, norm_num_groups=8,
                 down_block_types=("DownBlock2D", "DownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "UpBlock2D", "UpBlock2D")),
    "small": dict(block_out_channels=(32, 64, 64), layers_per_block=1, norm_num_groups=8,
                  down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
                  up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D")),
    # google/ddpm-cifar10-32's layout (attention at the 16x16 level of a 32x32 input), 8x narrower and one layer
    # per block, so that it trains on 2 CPU cores (0.76 s per step at batch 64, one thread): 384k parameters
    "cifar-narrow": dict(block_out_channels=(16, 32, 32, 32), layers_per_block=1, norm_num_groups=8,
                         down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
                         up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
                         attention_head_dim=None),
    # google/ddpm-cifar10-32 (docs/method.md section 2): 35.7M parameters
    "cifar10": dict(block_out_channels=(128, 256, 256, 256), layers_per_block=2, norm_num_groups=32, norm_eps=1e-6,
                    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
                    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
                    attention_head_dim=None, dropout=0.1),
}


def make_unet(preset: str = "demo", sample_size: int = 16, channels: int = 3, seed: int = 0):
    """A freshly initialised diffusers UNet2DModel of a named preset (weights seeded)."""
    from diffusers import UNet2DModel

    if preset not in UNET_PRESETS:
        raise PdfastError(f"unknown architecture '{preset}'; choose one of {', '.join(UNET_PRESETS)}")
    torch.manual_seed(seed)
    cfg = dict(UNET_PRESETS[preset])
    if cfg.get("attention_head_dim", 1) is None:
        cfg.pop("attention_head_dim")
    return UNet2DModel(sample_size=sample_size, in_channels=channels, out_channels=channels, **cfg)


@dataclass(frozen=True)
class TrainConfig:
    """Optimiser settings shared by clean training and the attack (BadDiffusion's defaults)."""

    steps: int = 2000
    batch: int = 64
    lr: float = 2e-4
    warmup: int = 500
    grad_clip: float = 1.0
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def cosine_with_warmup(step: int, warmup: int, total: int) -> float:
    """Learning-rate factor: linear warm-up to 1 over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def fit(net: torch.nn.Module, make_batch: Callable[[torch.Generator], tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
        cfg: TrainConfig, *, device: str | torch.device = "cpu", progress: bool = True, desc: str = "train",
        callback: Callable[[int, float], None] | None = None, checkpoint: str | Path | None = None,
        checkpoint_every: int = 500) -> list[float]:
    """Adam on MSE(net(x_in, t), target) with a cosine schedule, warm-up and grad clipping; returns the losses.

    ``make_batch(gen) -> (x_in, t, target)`` draws one batch on ``device``. With ``checkpoint`` the whole state
    (weights, Adam, schedule, random stream, losses) is saved there every ``checkpoint_every`` steps and a run
    finds it and resumes, giving the same weights as an uninterrupted run.
    """
    from tqdm.auto import tqdm

    net.train().requires_grad_(True).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_with_warmup(s, cfg.warmup, cfg.steps))
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
    losses: list[float] = []
    start, seconds = _resume(checkpoint, cfg, net, opt, sched, gen, losses) if checkpoint else (0, 0.0)
    t0 = time.perf_counter() - seconds  # wall seconds over every run of this training, kept in the checkpoint
    bar = tqdm(range(start, cfg.steps), desc=desc, disable=not progress, mininterval=1.0)
    for step in bar:
        x_in, t, target = make_batch(gen)
        out = net(x_in, t)
        out = out.sample if hasattr(out, "sample") else out
        loss = torch.nn.functional.mse_loss(out, target)
        if not torch.isfinite(loss):
            raise PdfastError(f"training diverged (loss {loss.item()}) at step {step}; lower --lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % 20 == 0:
            bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.4f}")
        if callback is not None:
            callback(step, losses[-1])
        if checkpoint and ((step + 1) % checkpoint_every == 0 or step + 1 == cfg.steps):
            _save_checkpoint(checkpoint, cfg, step + 1, net, opt, sched, gen, losses, time.perf_counter() - t0)
    net.eval().requires_grad_(False)
    return losses


def _save_checkpoint(path, cfg: TrainConfig, step: int, net, opt, sched, gen, losses, seconds: float) -> None:
    """Write the full training state atomically (a crash mid-write leaves the previous checkpoint)."""
    import os

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"config": cfg.to_dict(), "step": step, "net": net.state_dict(), "opt": opt.state_dict(),
                "sched": sched.state_dict(), "gen": gen.get_state(), "losses": losses, "seconds": seconds}, tmp)
    os.replace(tmp, path)


def _resume(path, cfg: TrainConfig, net, opt, sched, gen, losses: list) -> tuple[int, float]:
    """Load a checkpoint written by _save_checkpoint for the same config; returns the step to continue from and the
    training seconds spent so far."""
    path = Path(path)
    if not path.is_file():
        return 0, 0.0
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state["config"] != cfg.to_dict():
        raise PdfastError(f"checkpoint {path} was written for other settings ({state['config']}); "
                          "delete it or resume with the same settings")
    net.load_state_dict(state["net"])
    opt.load_state_dict(state["opt"])
    sched.load_state_dict(state["sched"])
    gen.set_state(state["gen"])
    losses.extend(state["losses"])
    return int(state["step"]), float(state.get("seconds", 0.0))


def noised(schedule: Schedule, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Forward process x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps (per-sample t)."""
    ab = schedule.abar.to(x0.device, torch.float32)[t].view(-1, 1, 1, 1)
    return ab.sqrt() * x0 + (1 - ab).sqrt() * eps


def train_ddpm(model: DiffusionModel, images: torch.Tensor, cfg: TrainConfig, *, device="cpu",
               progress: bool = True, checkpoint: str | Path | None = None) -> list[float]:
    """Train ``model.net`` in place with the DDPM simple loss on ``images`` (N, C, H, W) in [-1, 1]."""
    images = images.to(device)
    T = model.schedule.T

    def make_batch(gen):
        idx = torch.randint(0, images.shape[0], (cfg.batch,), generator=gen).to(device)
        x0 = images[idx]
        if torch.rand((), generator=gen) < 0.5:  # horizontal flip augmentation
            x0 = x0.flip(-1)
        t = torch.randint(0, T, (cfg.batch,), generator=gen).to(device)
        eps = torch.randn(x0.shape, generator=gen).to(device)
        return noised(model.schedule, x0, t, eps), t, eps

    losses = fit(model.net, make_batch, cfg, device=device, progress=progress, desc="train", checkpoint=checkpoint)
    model.invalidate_hash()
    return losses
