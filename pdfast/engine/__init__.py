"""Chain engines: how one inversion iteration runs down the denoising chain (pdfast.chain) and back to the trigger.

Every engine implements the same two calls (see ``base.Engine``):
  loss_and_grad(delta, noise, zs, sampler, objective, loss_steps) -> (loss, d loss / d delta)
  sample(n, trigger=None, seed=0, batch=64, progress=False) -> images
``reference`` is plain eager fp32 autograd (the specification); ``fast`` adds checkpointing across
timesteps, torch.compile, bf16 and CUDA graphs, and is tested against ``reference``.
"""
from __future__ import annotations

import importlib

from ..errors import PdfastError
from .base import ENGINE_NAMES, Engine  # noqa: F401

_CLASSES = {"reference": ("pdfast.engine.reference", "ReferenceEngine"), "fast": ("pdfast.engine.fast", "FastEngine")}


def make_engine(name: str, model, **options) -> Engine:
    """An engine by name ('reference' or 'fast') for a frozen model; options go to the engine (fast: dtype, compile,
    memory_budget, cuda_graphs)."""
    if name not in _CLASSES:
        raise PdfastError(f"unknown engine '{name}'; use one of: {', '.join(ENGINE_NAMES)}")
    module, cls = _CLASSES[name]
    return getattr(importlib.import_module(module), cls)(model, **options)
