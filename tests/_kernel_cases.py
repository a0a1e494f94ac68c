"""The fused-op checks shared by tests/test_kernels.py (Triton) and tests/test_native.py (every backend): seeded
inputs, the closeness rule, and one op call compared with its torch reference, output and every gradient.

The checks call the public functions (pdfast.kernels.ddpm_update, shift_loss), so the backend is whatever the caller
selected (PDFAST_KERNELS, PDFAST_FORCE_TRITON, the device). They call the references as pdfast.kernels attributes,
which test_native's spies (on the kernel modules' attributes) do not count.
"""
import zlib

import torch

import pdfast.kernels as K

COEFFS = (1.0123, 0.0456, 0.2345)  # c1, c2, sigma: arbitrary, unequal, so a swapped coefficient shows
LAM = 0.37
UPDATE_INPUTS = ("x", "eps", "noise")


def assert_close(actual, expected, tol):
    """Same shape and dtype; elementwise rtol = tol, atol = tol times the largest reference magnitude (gradients
    span 1e-3..1). Compared in fp64, which holds every fp32 and bf16 value exactly."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype, (actual.shape, expected.shape,
                                                                                 actual.dtype, expected.dtype)
    atol = tol * max(expected.detach().abs().max().item(), 1e-6) if expected.numel() else tol
    torch.testing.assert_close(actual.detach().double(), expected.detach().double(), rtol=tol, atol=atol)


def gen(*key):
    """A generator seeded from the test case (str hashes are salted per process: crc32 of the repr is not)."""
    return torch.Generator().manual_seed(zlib.crc32(repr(key).encode()))


def leaf(shape, device, dtype, generator, requires_grad=True):
    """Standard normal values drawn in fp64 on the CPU, then moved: the same numbers on every device and dtype."""
    return torch.randn(shape, generator=generator, dtype=torch.float64).to(device=device, dtype=dtype).requires_grad_(
        requires_grad)


def delta_shape(shape, form):
    return {"chw": tuple(shape[1:]), "1chw": (1, *shape[1:])}[form]


def check_update(shape, with_noise, device="cpu", dtype=torch.float32, tol=1e-5, grad_mask=None):
    """ddpm_update against ddpm_update_ref: the output and the gradient of every input whose grad_mask entry is true
    (default: x, eps and noise)."""
    generator = gen(shape, with_noise)
    grad_mask = grad_mask or dict.fromkeys(UPDATE_INPUTS, True)
    x = leaf(shape, device, dtype, generator, grad_mask["x"])
    eps = leaf(shape, device, dtype, generator, grad_mask["eps"])
    noise = leaf(shape, device, dtype, generator, grad_mask["noise"]) if with_noise else None
    out = K.ddpm_update(x, eps, *COEFFS, noise=noise)
    ref = K.ddpm_update_ref(x, eps, *COEFFS, noise=noise)
    assert_close(out, ref, tol)
    inputs = [t for t in (x, eps, noise) if t is not None and t.requires_grad]
    if not inputs:
        return
    g = torch.randn(shape, generator=generator, dtype=torch.float64).to(device=device, dtype=dtype)
    for a, b in zip(torch.autograd.grad(out, inputs, g), torch.autograd.grad(ref, inputs, g)):
        assert_close(a, b, tol)


def check_loss(shape, delta_form, norm, device="cpu", dtype=torch.float32, tol=1e-5, eps_hat=None, delta=None,
               loss_dtype=None):
    """shift_loss against shift_loss_ref: the 0-dim loss (of dtype loss_dtype, default the reference's) and both
    gradients under an upstream gradient of 2.5. eps_hat and delta are drawn unless given."""
    generator = gen(shape, delta_form, norm)
    if eps_hat is None:
        eps_hat = leaf(shape, device, dtype, generator)
        delta = leaf(delta_shape(shape, delta_form), device, dtype, generator)
    loss = K.shift_loss(eps_hat, delta, LAM, norm)
    ref = K.shift_loss_ref(eps_hat, delta, LAM, norm)
    assert loss.dim() == 0 and loss.dtype == (loss_dtype or ref.dtype), (loss.shape, loss.dtype, ref.dtype)
    assert_close(loss.to(ref.dtype), ref, tol)
    got = torch.autograd.grad(2.5 * loss, (eps_hat, delta))  # upstream gradient 2.5, not 1: g must be applied
    want = torch.autograd.grad(2.5 * ref, (eps_hat, delta))
    for a, b in zip(got, want):
        assert_close(a, b, tol)
