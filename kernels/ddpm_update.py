"""Fused DDPM ancestral update x_prev = c1 (x + delta - c2 eps) + sigma z, trigger delta broadcast over the batch.

Unfused, the triggered first step is 4-5 elementwise kernels forward and as many backward plus a separate batch sum
for the trigger gradient; here it is one kernel each way, and the batch reduction for grad_delta happens inside the
backward kernel (each program owns a block of per-image elements and loops over the batch).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from . import native
from ._dispatch import (batch_loop_launch, cdiv, compute_dtype, elementwise_launch, lazy_jit, result_dtype,
                        select_backend)

if TYPE_CHECKING:  # bound at the first launch by lazy_jit: importing this module never imports triton
    import triton.language as tl


@lazy_jit
def _ddpm_update_fwd_kernel(x_ptr, eps_ptr, noise_ptr, delta_ptr, out_ptr, n_elements, n_per_image, c1, c2, sigma,
                            HAS_NOISE: tl.constexpr, HAS_DELTA: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)  # int64 offsets: B*C*H*W may pass 2**31 at large batch and resolution
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n_elements
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_DELTA:
        x += tl.load(delta_ptr + offs % n_per_image, mask=mask, other=0.0).to(tl.float32)
    eps = tl.load(eps_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    out = c1 * (x - c2 * eps)
    if HAS_NOISE:
        out += sigma * tl.load(noise_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=mask)


@lazy_jit
def _ddpm_update_bwd_kernel(g_ptr, gx_ptr, geps_ptr, gnoise_ptr, gdelta_ptr, n_batch, n_per_image, c1, c2, sigma,
                            WRITE_X: tl.constexpr, WRITE_EPS: tl.constexpr, WRITE_NOISE: tl.constexpr,
                            WRITE_DELTA: tl.constexpr, BLOCK: tl.constexpr):
    # Without a delta gradient the launcher passes n_batch = 1 and n_per_image = numel: a flat elementwise pass.
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n_per_image
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for _ in range(n_batch):
        g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        if WRITE_X:
            tl.store(gx_ptr + offs, (c1 * g).to(gx_ptr.dtype.element_ty), mask=mask)
            gx_ptr += n_per_image
        if WRITE_EPS:
            tl.store(geps_ptr + offs, (-c1 * c2 * g).to(geps_ptr.dtype.element_ty), mask=mask)
            geps_ptr += n_per_image
        if WRITE_NOISE:
            tl.store(gnoise_ptr + offs, (sigma * g).to(gnoise_ptr.dtype.element_ty), mask=mask)
            gnoise_ptr += n_per_image
        if WRITE_DELTA:
            acc += g
        g_ptr += n_per_image  # pointer increments: 64-bit, no b * n_per_image overflow
    if WRITE_DELTA:
        tl.store(gdelta_ptr + offs, (c1 * acc).to(gdelta_ptr.dtype.element_ty), mask=mask)


def _ddpm_update_fwd(x, eps, noise, delta, c1: float, c2: float, sigma: float) -> torch.Tensor:
    x, eps = x.contiguous(), eps.contiguous()
    noise = noise.contiguous() if noise is not None else None
    delta = delta.contiguous() if delta is not None else None
    out = torch.empty(x.shape, dtype=result_dtype(x, eps, noise, delta), device=x.device)
    n = x.numel()
    if n == 0:
        return out
    block, warps = elementwise_launch(n)
    _ddpm_update_fwd_kernel[(cdiv(n, block),)](
        x, eps, noise if noise is not None else x, delta if delta is not None else x, out,
        n, n // x.shape[0], c1, c2, sigma,
        HAS_NOISE=noise is not None, HAS_DELTA=delta is not None, BLOCK=block, num_warps=warps)
    return out


def _ddpm_update_bwd(g, c1, c2, sigma, dtypes, delta_shape, need):
    """Gradients (x, eps, noise, delta) of the update; None where `need` is False."""
    g = g.contiguous()
    need_x, need_eps, need_noise, need_delta = need
    dx, deps, dnoise, ddelta = dtypes

    def new(flag, shape, dtype):
        return torch.empty(shape, dtype=dtype, device=g.device) if flag else None

    gx, geps, gnoise = new(need_x, g.shape, dx), new(need_eps, g.shape, deps), new(need_noise, g.shape, dnoise)
    gdelta = new(need_delta, delta_shape, ddelta)
    n = g.numel()
    if n == 0:
        return gx, geps, gnoise, gdelta.zero_() if gdelta is not None else None
    if need_delta:
        n_batch, n_per_image = g.shape[0], n // g.shape[0]
        block, warps = batch_loop_launch(n_per_image)
    else:
        n_batch, n_per_image = 1, n
        block, warps = elementwise_launch(n)
    _ddpm_update_bwd_kernel[(cdiv(n_per_image, block),)](
        g, gx if need_x else g, geps if need_eps else g, gnoise if need_noise else g, gdelta if need_delta else g,
        n_batch, n_per_image, c1, c2, sigma,
        WRITE_X=need_x, WRITE_EPS=need_eps, WRITE_NOISE=need_noise, WRITE_DELTA=need_delta,
        BLOCK=block, num_warps=warps)
    return gx, geps, gnoise, gdelta


class _DDPMUpdateFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, eps, noise, delta, c1, c2, sigma):
        ctx.coeffs = (c1, c2, sigma)
        ctx.dtypes = tuple(t.dtype if t is not None else None for t in (x, eps, noise, delta))
        ctx.delta_shape = delta.shape if delta is not None else None
        return _ddpm_update_fwd(x, eps, noise, delta, c1, c2, sigma)

    @staticmethod
    def backward(ctx, g):
        need = tuple(bool(f) for f in ctx.needs_input_grad[:4])
        grads = _ddpm_update_bwd(g, *ctx.coeffs, ctx.dtypes, ctx.delta_shape, need)
        return (*grads, None, None, None)


def ddpm_update_ref(x, eps, c1, c2, sigma, noise=None, delta=None):
    """Reference of `ddpm_update` in plain torch (the specification, the CPU path and the benchmark baseline)."""
    dtype, ct = result_dtype(x, eps, noise, delta), compute_dtype(x, eps, noise, delta)
    x_in = x.to(ct) if delta is None else x.to(ct) + delta.to(ct)
    out = c1 * (x_in - c2 * eps.to(ct))
    if noise is not None:
        out = out + sigma * noise.to(ct)
    return out.to(dtype)


def _check(x, eps, noise, delta):
    if x.dim() < 1 or eps.shape != x.shape:
        raise ValueError(f"ddpm_update: eps must have the shape of x (B, ...), got {tuple(eps.shape)} and "
                         f"{tuple(x.shape)}")
    if noise is not None and noise.shape != x.shape:
        raise ValueError(f"ddpm_update: noise must have the shape of x {tuple(x.shape)}, got {tuple(noise.shape)}")
    if delta is not None and tuple(delta.shape) not in (tuple(x.shape[1:]), (1, *x.shape[1:])):
        raise ValueError(f"ddpm_update: delta must be (1, C, H, W) or (C, H, W) for x {tuple(x.shape)}, "
                         f"got {tuple(delta.shape)}")


def ddpm_update(x, eps, c1: float, c2: float, sigma: float, noise=None, delta=None):
    """DDPM step x_prev = c1 (x + delta - c2 eps) + sigma z (Ho et al. 2020 Alg. 2; c1 = 1/sqrt(alpha_t),
    c2 = beta_t/sqrt(1-abar_t)); delta (optional) is the trigger broadcast over the batch, noise=None drops z."""
    _check(x, eps, noise, delta)
    backend = select_backend("ddpm_update", x, eps, noise, delta)
    if backend == "triton":
        return _DDPMUpdateFunction.apply(x, eps, noise, delta, float(c1), float(c2), float(sigma))
    if backend == "native":
        return native.ddpm_update(x, eps, float(c1), float(c2), float(sigma), noise, delta)
    return ddpm_update_ref(x, eps, c1, c2, sigma, noise=noise, delta=delta)
