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



def coefficient_row(values, device, offset=1):
    """The coefficients as a view at `offset` into a longer fp32 buffer, as the fast engine's static row hands them
    to the ops (sampler coefficients, then the objective's lambda): a kernel reading the wrong element shows."""
    buf = torch.tensor([9.0] * offset + list(values) + [7.0], dtype=torch.float32, device=device)
    return buf[offset:offset + len(values)]


def check_update_row(shape, with_noise, device="cpu", dtype=torch.float32, tol=1e-6):
    """ddpm_update_row against the torch formula with the same tensor coefficients (ddpm_update_ref(x, eps, row[0],
    row[1], row[2], noise)): the output and the gradients of x, eps and noise. Returns (out, x, eps, noise, row)."""
    generator = gen("row", shape, with_noise)
    x, eps = leaf(shape, device, dtype, generator), leaf(shape, device, dtype, generator)
    noise = leaf(shape, device, dtype, generator) if with_noise else None
    row = coefficient_row(COEFFS, device)
    out = K.ddpm_update_row(x, eps, row, noise=noise)
    ref = K.ddpm_update_ref(x, eps, row[0], row[1], row[2], noise=noise)
    assert_close(out, ref, tol)
    inputs = [t for t in (x, eps, noise) if t is not None]
    g = torch.randn(shape, generator=generator, dtype=torch.float64).to(device=device, dtype=dtype)
    for a, b in zip(torch.autograd.grad(out, inputs, g, retain_graph=True), torch.autograd.grad(ref, inputs, g)):
        assert_close(a, b, tol)
    return out, x, eps, noise, row


def check_loss_row(shape, norm, device="cpu", dtype=torch.float32, tol=1e-6):
    """shift_loss_row (lam a 0-dim view into a row, at an odd offset as in the engine's row) against shift_loss_ref
    with the same tensor lam: the loss and both gradients under an upstream gradient of 2.5. Returns (loss, eps_hat,
    delta, lam)."""
    generator = gen("row", shape, norm)
    eps_hat = leaf(shape, device, dtype, generator)
    delta = leaf(delta_shape(shape, "1chw"), device, dtype, generator)
    lam = coefficient_row([LAM], device, offset=7)[0]
    loss = K.shift_loss_row(eps_hat, delta, lam, norm)
    ref = K.shift_loss_ref(eps_hat, delta, lam, norm)
    assert loss.dim() == 0 and loss.dtype == torch.float32
    assert_close(loss.to(ref.dtype), ref, tol)
    got = torch.autograd.grad(2.5 * loss, (eps_hat, delta), retain_graph=True)
    for a, b in zip(got, torch.autograd.grad(2.5 * ref, (eps_hat, delta))):
        assert_close(a, b, tol)
    return loss, eps_hat, delta, lam

# The Triton kernels (module attribute names) and their device-coefficient constexpr: the row forms of the ops launch
# them with it True (ddpm_update_row: ROW, shift_loss_row: LAM_PTR), the float forms with it False.
KERNELS = {"pdfast.kernels.ddpm_update": {"_ddpm_update_fwd_kernel": "ROW", "_ddpm_update_bwd_kernel": "ROW"},
           "pdfast.kernels._batch_mean": {"_batch_mean_fwd_kernel": "LAM_PTR"},
           "pdfast.kernels.shift_loss": {"_shift_loss_bwd_kernel": "LAM_PTR"}}


class _CountingKernel:
    """Wraps a lazily jitted kernel: every `kernel[grid](...)` launch adds one to counts[(name, from_device)]."""

    def __init__(self, kernel, name, flag, counts):
        self.kernel, self.name, self.flag, self.counts = kernel, name, flag, counts

    def __getitem__(self, grid):
        launch = self.kernel[grid]

        def counted(*args, **kwargs):
            self.counts[self.name, bool(kwargs[self.flag])] += 1
            return launch(*args, **kwargs)

        return counted


def count_launches(monkeypatch):
    """Replaces the fused ops' Triton kernels by counting wrappers; returns the Counter of (kernel name, read its
    coefficients from a device tensor) launches, filled as the kernels run."""
    import collections
    import importlib

    counts = collections.Counter()
    for module_name, kernels in KERNELS.items():
        module = importlib.import_module(module_name)
        for name, flag in kernels.items():
            monkeypatch.setattr(module, name, _CountingKernel(getattr(module, name), name, flag, counts))
    return counts


def row_launches(counts):
    """{kernel name: launches with device coefficients}, every kernel of KERNELS listed."""
    return {name: counts[name, True] for kernels in KERNELS.values() for name in kernels}
