"""Fused DDPM ancestral update x_prev = c1 (x - c2 eps) + sigma z.

Unfused, the step is 3-4 elementwise kernels forward and as many backward; here it is one kernel each way. Both are
flat elementwise passes: the backward writes the gradients of x, eps and noise (each only when asked for) from one
read of the upstream gradient.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from . import native
from ._dispatch import cdiv, compute_dtype, elementwise_launch, lazy_jit, result_dtype, select_backend

if TYPE_CHECKING:  # bound at the first launch by lazy_jit: importing this module never imports triton
    import triton.language as tl


@lazy_jit
def _ddpm_update_fwd_kernel(x_ptr, eps_ptr, noise_ptr, out_ptr, n_elements, c1, c2, sigma, HAS_NOISE: tl.constexpr,
                            BLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)  # int64 offsets: B*C*H*W may pass 2**31 at large batch and resolution
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n_elements
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    eps = tl.load(eps_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    out = c1 * (x - c2 * eps)
    if HAS_NOISE:
        out += sigma * tl.load(noise_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=mask)


@lazy_jit
def _ddpm_update_bwd_kernel(g_ptr, gx_ptr, geps_ptr, gnoise_ptr, n_elements, c1, c2, sigma, WRITE_X: tl.constexpr,
                            WRITE_EPS: tl.constexpr, WRITE_NOISE: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n_elements
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if WRITE_X:
        tl.store(gx_ptr + offs, (c1 * g).to(gx_ptr.dtype.element_ty), mask=mask)
    if WRITE_EPS:
        tl.store(geps_ptr + offs, (-c1 * c2 * g).to(geps_ptr.dtype.element_ty), mask=mask)
    if WRITE_NOISE:
        tl.store(gnoise_ptr + offs, (sigma * g).to(gnoise_ptr.dtype.element_ty), mask=mask)


def _ddpm_update_fwd(x, eps, noise, c1: float, c2: float, sigma: float) -> torch.Tensor:
    x, eps = x.contiguous(), eps.contiguous()
    noise = noise.contiguous() if noise is not None else None
    out = torch.empty(x.shape, dtype=result_dtype(x, eps, noise), device=x.device)
    n = x.numel()
    if n == 0:
        return out
    block, warps = elementwise_launch(n)
    _ddpm_update_fwd_kernel[(cdiv(n, block),)](
        x, eps, noise if noise is not None else x, out, n, c1, c2, sigma,
        HAS_NOISE=noise is not None, BLOCK=block, num_warps=warps)
    return out


def _ddpm_update_bwd(g, c1, c2, sigma, dtypes, need):
    """Gradients (x, eps, noise) of the update, each in its input's dtype; None where `need` is False."""
    g = g.contiguous()
    gx, geps, gnoise = (torch.empty(g.shape, dtype=dtype, device=g.device) if flag else None
                        for flag, dtype in zip(need, dtypes))
    n = g.numel()
    if n == 0 or not any(need):
        return gx, geps, gnoise
    block, warps = elementwise_launch(n)
    _ddpm_update_bwd_kernel[(cdiv(n, block),)](
        g, gx if gx is not None else g, geps if geps is not None else g, gnoise if gnoise is not None else g,
        n, c1, c2, sigma, WRITE_X=need[0], WRITE_EPS=need[1], WRITE_NOISE=need[2], BLOCK=block, num_warps=warps)
    return gx, geps, gnoise


class _DDPMUpdateFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, eps, noise, c1, c2, sigma):
        ctx.coeffs = (c1, c2, sigma)
        ctx.dtypes = tuple(t.dtype if t is not None else None for t in (x, eps, noise))
        return _ddpm_update_fwd(x, eps, noise, c1, c2, sigma)

    @staticmethod
    def backward(ctx, g):
        need = tuple(bool(f) for f in ctx.needs_input_grad[:3])
        return (*_ddpm_update_bwd(g, *ctx.coeffs, ctx.dtypes, need), None, None, None)


def ddpm_update_ref(x, eps, c1, c2, sigma, noise=None):
    """Reference of `ddpm_update` in plain torch (the specification, the CPU path and the benchmark baseline)."""
    dtype, ct = result_dtype(x, eps, noise), compute_dtype(x, eps, noise)
    out = c1 * (x.to(ct) - c2 * eps.to(ct))
    if noise is not None:
        out = out + sigma * noise.to(ct)
    return out.to(dtype)


def _check(x, eps, noise):
    if x.dim() < 1 or eps.shape != x.shape:
        raise ValueError(f"ddpm_update: eps must have the shape of x (B, ...), got {tuple(eps.shape)} and "
                         f"{tuple(x.shape)}")
    if noise is not None and noise.shape != x.shape:
        raise ValueError(f"ddpm_update: noise must have the shape of x {tuple(x.shape)}, got {tuple(noise.shape)}")


def ddpm_update(x, eps, c1: float, c2: float, sigma: float, noise=None):
    """DDPM step x_prev = c1 (x - c2 eps) + sigma z (Ho et al. 2020 Alg. 2; c1 = 1/sqrt(alpha_t),
    c2 = beta_t/sqrt(1-abar_t)); noise=None drops z."""
    _check(x, eps, noise)
    backend = select_backend("ddpm_update", x, eps, noise)
    if backend == "triton":
        return _DDPMUpdateFunction.apply(x, eps, noise, float(c1), float(c2), float(sigma))
    if backend == "native":
        return native.ddpm_update(x, eps, float(c1), float(c2), float(sigma), noise)
    return ddpm_update_ref(x, eps, c1, c2, sigma, noise=noise)
