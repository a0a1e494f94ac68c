"""Chain engines: how one inversion iteration runs down the denoising chain and back to the trigger.

Every engine implements the same two calls (see ``base.Engine``):
  loss_and_grad(delta, noise, zs, timesteps, lambdas, loss_steps, norm) -> (loss, d loss / d delta)
  sample(n, trigger=None, seed=0, batch=64, progress=False) -> images
``reference`` is plain eager fp32 autograd (the specification); ``fast`` adds checkpointing across
timesteps, torch.compile, bf16 and the fused kernels, and is tested against ``reference``.
"""
from __future__ import annotations

from .base import Engine, ENGINES, make_engine  # noqa: F401
