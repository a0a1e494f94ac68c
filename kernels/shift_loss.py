"""Fused trigger-shift loss L = mean |mean_b eps_hat_b - lam delta| (or its square), forward and backward.

One pass over eps_hat forward (batch mean, shift, per-block partial sums: the kernel in _batch_mean.py, shared with
lstsq_scale) and one write pass backward; d = m - lam delta (C*H*W fp32, 12 KiB at CIFAR size) is saved for the
backward so eps_hat is never re-read.

lam is a python float (`shift_loss`, the eager chain) or a one-element device tensor (`shift_loss_row`: both kernels
read it on the device, the LAM_PTR constexpr), the form a CUDA graph captures once and replays for every timestep
with the step's lambda in its static row (the fast engine's recomputed backward step).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from . import native
from ._batch_mean import batch_mean_fwd
from ._dispatch import (batch_loop_launch, cdiv, check_coefficient_row, compute_dtype, device_coefficients, lazy_jit,
                        select_backend)

if TYPE_CHECKING:  # bound at the first launch by lazy_jit: importing this module never imports triton
    import triton.language as tl

NORMS = ("l1", "l2")


@lazy_jit
def _shift_loss_bwd_kernel(g_ptr, d_ptr, geps_ptr, gdelta_ptr, lam_ptr, n_batch, n_per_image, lam,
                           L2: tl.constexpr, WRITE_EPS: tl.constexpr, WRITE_DELTA: tl.constexpr,
                           LAM_PTR: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n_per_image
    g = tl.load(g_ptr).to(tl.float32)  # the 0-dim upstream gradient, read on the device: no host sync
    d = tl.load(d_ptr + offs, mask=mask, other=0.0)
    if L2:
        dl = 2.0 * d / n_per_image
    else:
        dl = tl.where(d > 0, 1.0, tl.where(d < 0, -1.0, 0.0)) / n_per_image  # sign(0) = 0, as torch.sign
    gd = g * dl
    if WRITE_DELTA:
        if LAM_PTR:  # lam from the device (a CUDA graph's static row): no host sync
            lam = tl.load(lam_ptr).to(tl.float32)
        tl.store(gdelta_ptr + offs, (-lam * gd).to(gdelta_ptr.dtype.element_ty), mask=mask)
    if WRITE_EPS:
        ge = (gd / n_batch).to(geps_ptr.dtype.element_ty)
        for _ in range(n_batch):
            tl.store(geps_ptr + offs, ge, mask=mask)
            geps_ptr += n_per_image


def _shift_loss_fwd(eps_hat, delta, lam, l2: bool):
    """Returns (loss as 0-dim fp32, d as fp32 (C*H*W,))."""
    partial, d = batch_mean_fwd(eps_hat, delta, "l2" if l2 else "l1", lam)
    return partial.sum() / d.numel(), d


def _shift_loss_bwd(g, d, n_batch, lam, l2, eps_shape, eps_dtype, delta_shape, delta_dtype, need_eps, need_delta):
    g = g.contiguous()
    n_per_image = d.numel()
    geps = torch.empty(eps_shape, dtype=eps_dtype, device=d.device) if need_eps else None
    gdelta = torch.empty(delta_shape, dtype=delta_dtype, device=d.device) if need_delta else None
    block, warps = batch_loop_launch(n_per_image)
    lam_ptr, lam_from_ptr = device_coefficients(lam, d)
    _shift_loss_bwd_kernel[(cdiv(n_per_image, block),)](
        g, d, geps if need_eps else d, gdelta if need_delta else d, lam_ptr, n_batch, n_per_image,
        0.0 if lam_from_ptr else lam, L2=l2, WRITE_EPS=need_eps, WRITE_DELTA=need_delta, LAM_PTR=lam_from_ptr,
        BLOCK=block, num_warps=warps)
    return geps, gdelta


class _ShiftLossFunction(torch.autograd.Function):
    """The Triton forward and backward; lam a float or a one-element device tensor (saved for the backward, whose
    kernel reads it again: lam gets no gradient)."""

    @staticmethod
    def forward(ctx, eps_hat, delta, lam, l2):
        loss, d = _shift_loss_fwd(eps_hat, delta, lam, l2)
        ctx.save_for_backward(d, lam if torch.is_tensor(lam) else None)
        ctx.lam, ctx.l2 = (None if torch.is_tensor(lam) else lam), l2
        ctx.eps_meta = (eps_hat.shape, eps_hat.dtype)
        ctx.delta_meta = (delta.shape, delta.dtype)
        return loss

    @staticmethod
    def backward(ctx, g):
        d, lam_row = ctx.saved_tensors
        need_eps, need_delta = (bool(f) for f in ctx.needs_input_grad[:2])
        lam = lam_row if lam_row is not None else ctx.lam
        geps, gdelta = _shift_loss_bwd(g, d, ctx.eps_meta[0][0], lam, ctx.l2, *ctx.eps_meta, *ctx.delta_meta,
                                       need_eps, need_delta)
        return geps, gdelta, None, None


def _check(eps_hat, delta, norm):
    if norm not in NORMS:
        raise ValueError(f"shift_loss: norm must be one of {NORMS}, got {norm!r}")
    if eps_hat.dim() < 1 or eps_hat.shape[0] == 0 or tuple(delta.shape) not in (tuple(eps_hat.shape[1:]),
                                                                                (1, *eps_hat.shape[1:])):
        raise ValueError(f"shift_loss: eps_hat must be (B, C, H, W) with B >= 1 and delta (1, C, H, W) or "
                         f"(C, H, W), got {tuple(eps_hat.shape)} and {tuple(delta.shape)}")


def shift_loss_ref(eps_hat, delta, lam: float, norm: str = "l1"):
    """Reference of `shift_loss` in plain torch (the specification, the CPU path and the benchmark baseline)."""
    if norm not in NORMS:
        raise ValueError(f"shift_loss: norm must be one of {NORMS}, got {norm!r}")
    ct = compute_dtype(eps_hat, delta)
    m = eps_hat.to(ct).mean(0)
    d = m - lam * delta.to(ct).reshape(m.shape)
    return d.abs().mean() if norm == "l1" else d.pow(2).mean()


def shift_loss(eps_hat, delta, lam: float, norm: str = "l1"):
    """Trigger-shift loss mean|mean_b eps_hat_b - lam delta| ("l1", Elijah with lam = 0.5) or its squared form
    ("l2"), PureDiffusion eq. 16-17; a 0-dim fp32 tensor (fp64 for fp64 inputs on the torch and native paths)."""
    _check(eps_hat, delta, norm)
    backend = select_backend("shift_loss", eps_hat, delta)
    if backend == "triton":
        return _ShiftLossFunction.apply(eps_hat, delta, float(lam), norm == "l2")
    if backend == "native":
        return native.shift_loss(eps_hat, delta, float(lam), norm == "l2")
    return shift_loss_ref(eps_hat, delta, lam, norm)


def shift_loss_row(eps_hat, delta, lam, norm: str = "l1"):
    """``shift_loss`` with lam a one-element device tensor: mean|mean_b eps_hat_b - lam delta| (or its square), lam read
    on the device (no host sync: a CUDA graph captures it; ShiftObjective.term in the fast engine's recomputed step).
    The Triton kernels where select_backend picks Triton, else the torch reference; lam gets no gradient."""
    _check(eps_hat, delta, norm)
    check_coefficient_row("shift_loss_row", lam, 1, eps_hat)
    if select_backend("shift_loss", eps_hat, delta, lam) == "triton":
        return _ShiftLossFunction.apply(eps_hat, delta, lam.reshape(()), norm == "l2")
    return shift_loss_ref(eps_hat, delta, lam.reshape(()), norm)
