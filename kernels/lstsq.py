"""Fused least-squares trigger-shift scale lambda = <m, delta> / <delta, delta>, m the batch mean of eps_hat.

One pass over eps_hat: each program reduces its block over the batch and writes two partial dot products; the
partials (2 x cdiv(C*H*W, BLOCK) fp32) are summed by torch. Forward only: the scales are measured, not trained.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ._dispatch import batch_loop_launch, cdiv, compute_dtype, lazy_jit, use_triton

if TYPE_CHECKING:  # bound at the first launch by lazy_jit: importing this module never imports triton
    import triton.language as tl


@lazy_jit
def _lstsq_scale_fwd_kernel(eps_ptr, delta_ptr, partial_ptr, n_batch, n_per_image, n_blocks, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n_per_image
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for _ in range(n_batch):
        acc += tl.load(eps_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        eps_ptr += n_per_image  # pointer increments: 64-bit, no b * n_per_image overflow
    delta = tl.load(delta_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    m = acc / n_batch
    tl.store(partial_ptr + pid, tl.sum(m * delta, axis=0))
    tl.store(partial_ptr + n_blocks + pid, tl.sum(delta * delta, axis=0))


def _lstsq_scale_fwd(eps_hat, delta) -> torch.Tensor:
    eps_hat, delta = eps_hat.contiguous(), delta.contiguous()
    n_per_image = delta.numel()
    block, warps = batch_loop_launch(n_per_image)
    grid = cdiv(n_per_image, block)
    partial = torch.empty(2, grid, dtype=torch.float32, device=eps_hat.device)
    _lstsq_scale_fwd_kernel[(grid,)](eps_hat, delta, partial, eps_hat.shape[0], n_per_image, grid,
                                     BLOCK=block, num_warps=warps)
    num, den = partial.sum(1)
    return num / den


def lstsq_scale_ref(eps_hat, delta):
    """Reference of `lstsq_scale` in plain torch (the specification, the CPU path and the benchmark baseline)."""
    ct = compute_dtype(eps_hat, delta)
    m = eps_hat.to(ct).mean(0).reshape(-1)
    d = delta.to(ct).reshape(-1)
    return torch.dot(m, d) / torch.dot(d, d)


@torch.no_grad()
def lstsq_scale(eps_hat, delta):
    """Trigger-shift scale lambda_t = <m_t, delta> / <delta, delta>, m_t = mean_b eps_hat_b: the least-squares
    solution of min_l ||m_t - l delta||^2 (PureDiffusion eq. 14-15); a 0-dim fp32 tensor, nan if delta = 0."""
    if eps_hat.dim() < 1 or eps_hat.shape[0] == 0 or tuple(delta.shape) not in (tuple(eps_hat.shape[1:]),
                                                                                (1, *eps_hat.shape[1:])):
        raise ValueError(f"lstsq_scale: eps_hat must be (B, C, H, W) with B >= 1 and delta (1, C, H, W) or "
                         f"(C, H, W), got {tuple(eps_hat.shape)} and {tuple(delta.shape)}")
    if use_triton(eps_hat, delta):
        return _lstsq_scale_fwd(eps_hat, delta)
    return lstsq_scale_ref(eps_hat, delta)
