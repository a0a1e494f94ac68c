"""Fused DDPM ancestral update x_prev = c1 (x - c2 eps) + sigma z.

Unfused, the step is 3-4 elementwise kernels forward and as many backward; here it is one kernel each way. Both are
flat elementwise passes: the backward writes the gradients of x, eps and noise (each only when asked for) from one
read of the upstream gradient.

The coefficients come as python floats (`ddpm_update`, the eager chain) or as a device tensor row (`ddpm_update_row`:
the kernels load c1, c2, sigma from row[0:3], the ROW constexpr), the form a CUDA graph captures once and replays for
every timestep with new values in its static row (the fast engine's recomputed backward step).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from . import native
from ._dispatch import (cdiv, check_coefficient_row, compute_dtype, device_coefficients, elementwise_launch, lazy_jit,
                        result_dtype, select_backend)

if TYPE_CHECKING:  # bound at the first launch by lazy_jit: importing this module never imports triton
    import triton.language as tl


@lazy_jit
def _ddpm_update_fwd_kernel(x_ptr, eps_ptr, noise_ptr, out_ptr, row_ptr, n_elements, c1, c2, sigma,
                            HAS_NOISE: tl.constexpr, ROW: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)  # int64 offsets: B*C*H*W may pass 2**31 at large batch and resolution
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n_elements
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    eps = tl.load(eps_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if ROW:  # the coefficients from the device row (a CUDA graph's static buffer): no host sync
        c1 = tl.load(row_ptr).to(tl.float32)
        c2 = tl.load(row_ptr + 1).to(tl.float32)
        sigma = tl.load(row_ptr + 2).to(tl.float32)
    out = c1 * (x - c2 * eps)
    if HAS_NOISE:
        out += sigma * tl.load(noise_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=mask)


@lazy_jit
def _ddpm_update_bwd_kernel(g_ptr, gx_ptr, geps_ptr, gnoise_ptr, row_ptr, n_elements, c1, c2, sigma,
                            WRITE_X: tl.constexpr, WRITE_EPS: tl.constexpr, WRITE_NOISE: tl.constexpr,
                            ROW: tl.constexpr, BLOCK: tl.constexpr):
    if ROW:
        c1 = tl.load(row_ptr).to(tl.float32)
        c2 = tl.load(row_ptr + 1).to(tl.float32)
        sigma = tl.load(row_ptr + 2).to(tl.float32)
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


def _ddpm_update_fwd(x, eps, noise, coeffs) -> torch.Tensor:
    """The forward launch; coeffs: (c1, c2, sigma) as floats, or the device row holding them."""
    x, eps = x.contiguous(), eps.contiguous()
    noise = noise.contiguous() if noise is not None else None
    out = torch.empty(x.shape, dtype=result_dtype(x, eps, noise), device=x.device)
    n = x.numel()
    if n == 0:
        return out
    row, from_row = device_coefficients(coeffs, x)
    c1, c2, sigma = (0.0, 0.0, 0.0) if from_row else coeffs
    block, warps = elementwise_launch(n)
    _ddpm_update_fwd_kernel[(cdiv(n, block),)](
        x, eps, noise if noise is not None else x, out, row, n, c1, c2, sigma,
        HAS_NOISE=noise is not None, ROW=from_row, BLOCK=block, num_warps=warps)
    return out


def _ddpm_update_bwd(g, coeffs, dtypes, need):
    """Gradients (x, eps, noise) of the update, each in its input's dtype; None where `need` is False."""
    g = g.contiguous()
    gx, geps, gnoise = (torch.empty(g.shape, dtype=dtype, device=g.device) if flag else None
                        for flag, dtype in zip(need, dtypes))
    n = g.numel()
    if n == 0 or not any(need):
        return gx, geps, gnoise
    row, from_row = device_coefficients(coeffs, g)
    c1, c2, sigma = (0.0, 0.0, 0.0) if from_row else coeffs
    block, warps = elementwise_launch(n)
    _ddpm_update_bwd_kernel[(cdiv(n, block),)](
        g, gx if gx is not None else g, geps if geps is not None else g, gnoise if gnoise is not None else g,
        row, n, c1, c2, sigma, WRITE_X=need[0], WRITE_EPS=need[1], WRITE_NOISE=need[2], ROW=from_row, BLOCK=block,
        num_warps=warps)
    return gx, geps, gnoise


class _DDPMUpdateFunction(torch.autograd.Function):
    """The Triton forward and backward; coeffs: (c1, c2, sigma) as floats, or a device row (saved for the backward,
    whose kernel reads it again: the row gets no gradient)."""

    @staticmethod
    def forward(ctx, x, eps, noise, coeffs):
        if torch.is_tensor(coeffs):
            ctx.save_for_backward(coeffs)
        else:
            ctx.coeffs = coeffs
        ctx.dtypes = tuple(t.dtype if t is not None else None for t in (x, eps, noise))
        return _ddpm_update_fwd(x, eps, noise, coeffs)

    @staticmethod
    def backward(ctx, g):
        need = tuple(bool(f) for f in ctx.needs_input_grad[:3])
        coeffs = ctx.saved_tensors[0] if ctx.saved_tensors else ctx.coeffs
        return (*_ddpm_update_bwd(g, coeffs, ctx.dtypes, need), None)


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
        return _DDPMUpdateFunction.apply(x, eps, noise, (float(c1), float(c2), float(sigma)))
    if backend == "native":
        return native.ddpm_update(x, eps, float(c1), float(c2), float(sigma), noise)
    return ddpm_update_ref(x, eps, c1, c2, sigma, noise=noise)


def ddpm_update_row(x, eps, row, noise=None):
    """``ddpm_update`` with its coefficients in a device tensor: x_prev = row[0] (x - row[1] eps) + row[2] z, read on
    the device (no host sync: a CUDA graph captures it; DDPMSampler.step_from_row). The Triton kernels where
    select_backend picks Triton, else the torch reference (the native library has no row form); row gets no gradient."""
    _check(x, eps, noise)
    check_coefficient_row("ddpm_update_row", row, 3, x)
    if select_backend("ddpm_update", x, eps, noise, row) == "triton":
        return _DDPMUpdateFunction.apply(x, eps, noise, row)
    return ddpm_update_ref(x, eps, row[0], row[1], row[2], noise=noise)
