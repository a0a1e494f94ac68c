"""Fused least-squares trigger-shift scale lambda = <m, delta> / <delta, delta>, m the batch mean of eps_hat.

One pass over eps_hat: each program reduces its block over the batch and writes two partial dot products; the
partials (2 x cdiv(C*H*W, BLOCK) fp32) are summed by torch. The Triton kernel is the one shift_loss uses too
(_batch_mean.py, mode "lstsq"). Forward only: the scales are measured, not trained.
"""
from __future__ import annotations

import torch

from . import native
from ._batch_mean import batch_mean_fwd
from ._dispatch import compute_dtype, select_backend


def _lstsq_scale_fwd(eps_hat, delta) -> torch.Tensor:
    partial, _ = batch_mean_fwd(eps_hat, delta, "lstsq")
    num, den = partial.sum(1)
    return num / den


def lstsq_scale_ref(eps_hat, delta):
    """Reference of `lstsq_scale` in plain torch (the specification, the CPU path and the benchmark baseline)."""
    ct = compute_dtype(eps_hat, delta)
    m = eps_hat.to(ct).mean(0).reshape(-1)
    d = delta.to(ct).reshape(-1)
    return torch.dot(m, d) / torch.dot(d, d)


def lstsq_scale(eps_hat, delta):
    """Trigger-shift scale lambda_t = <m_t, delta> / <delta, delta>, m_t = mean_b eps_hat_b: the least-squares
    solution of min_l ||m_t - l delta||^2 (PureDiffusion eq. 14-15); a 0-dim fp32 tensor (fp64 for fp64 inputs on the
    torch and native paths), nan if delta = 0. Never differentiable (measured, not trained)."""
    if torch.is_grad_enabled() and (eps_hat.requires_grad or delta.requires_grad):
        with torch.no_grad():  # only when needed: entering no_grad costs as much as the native op at small sizes
            return lstsq_scale(eps_hat, delta)
    if eps_hat.dim() < 1 or eps_hat.shape[0] == 0 or tuple(delta.shape) not in (tuple(eps_hat.shape[1:]),
                                                                                (1, *eps_hat.shape[1:])):
        raise ValueError(f"lstsq_scale: eps_hat must be (B, C, H, W) with B >= 1 and delta (1, C, H, W) or "
                         f"(C, H, W), got {tuple(eps_hat.shape)} and {tuple(delta.shape)}")
    backend = select_backend("lstsq_scale", eps_hat, delta)
    if backend == "triton":
        return _lstsq_scale_fwd(eps_hat, delta)
    if backend == "native":
        return native.lstsq_scale(eps_hat, delta)
    return lstsq_scale_ref(eps_hat, delta)
