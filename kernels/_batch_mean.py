"""The Triton forward shared by shift_loss and lstsq_scale: one pass over eps_hat that reduces each block of per-image
positions over the batch (m = mean_b eps_hat_b) and finishes it while it is in registers.

MODE picks the finish (a constexpr: each mode is its own compiled kernel):
  "l1" / "l2"  d = m - lam delta is written out (C*H*W fp32, kept for the backward); partial row 0 gets sum |d| or
               sum d^2 per program
  "lstsq"      partial rows 0 and 1 get <m, delta> and <delta, delta> per program; nothing else is written
The partial sums (rows x cdiv(C*H*W, BLOCK) fp32) are summed by torch. lam is a python float, or a one-element
device tensor the kernel reads (LAM_PTR: no host sync, for a CUDA graph that replays with new values in it).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ._dispatch import batch_loop_launch, cdiv, device_coefficients, lazy_jit

if TYPE_CHECKING:  # bound at the first launch by lazy_jit: importing this module never imports triton
    import triton.language as tl

MODES = ("l1", "l2", "lstsq")


@lazy_jit
def _batch_mean_fwd_kernel(eps_ptr, delta_ptr, d_ptr, partial_ptr, lam_ptr, n_batch, n_per_image, n_blocks, lam,
                           MODE: tl.constexpr, LAM_PTR: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n_per_image
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for _ in range(n_batch):
        acc += tl.load(eps_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        eps_ptr += n_per_image  # pointer increments: 64-bit, no b * n_per_image overflow
    delta = tl.load(delta_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    m = acc / n_batch  # masked lanes: 0, so they add nothing to the sums below
    if MODE == "lstsq":
        tl.store(partial_ptr + pid, tl.sum(m * delta, axis=0))
        tl.store(partial_ptr + n_blocks + pid, tl.sum(delta * delta, axis=0))
    else:
        if LAM_PTR:
            lam = tl.load(lam_ptr).to(tl.float32)
        d = m - lam * delta
        tl.store(d_ptr + offs, d, mask=mask)
        if MODE == "l2":
            v = d * d
        else:
            v = tl.abs(d)
        tl.store(partial_ptr + pid, tl.sum(v, axis=0))


def batch_mean_fwd(eps_hat, delta, mode: str, lam=0.0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Launches the kernel in `mode` (one of MODES), lam a float or a one-element device tensor; returns (the partial
    sums, (2, n_blocks) for "lstsq" and (n_blocks,) otherwise, and d as fp32 (C*H*W,), None for "lstsq")."""
    if mode not in MODES:
        raise ValueError(f"batch_mean_fwd: mode must be one of {MODES}, got {mode!r}")
    eps_hat, delta = eps_hat.contiguous(), delta.contiguous()
    n_per_image = delta.numel()
    block, warps = batch_loop_launch(n_per_image)
    grid = cdiv(n_per_image, block)
    lstsq = mode == "lstsq"
    partial = torch.empty((2, grid) if lstsq else (grid,), dtype=torch.float32, device=eps_hat.device)
    d = None if lstsq else torch.empty(n_per_image, dtype=torch.float32, device=eps_hat.device)
    lam_ptr, lam_from_ptr = device_coefficients(lam, partial)
    _batch_mean_fwd_kernel[(grid,)](eps_hat, delta, partial if lstsq else d, partial, lam_ptr, eps_hat.shape[0],
                                    n_per_image, grid, 0.0 if lam_from_ptr else lam, MODE=mode, LAM_PTR=lam_from_ptr,
                                    BLOCK=block, num_warps=warps)
    return partial, d
