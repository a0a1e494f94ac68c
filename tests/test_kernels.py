"""Fused kernels against their torch references: forward and every gradient, odd shapes, both dispatch paths.

CPU tests run the Triton kernels under TRITON_INTERPRET=1 (fp32 only: bf16 crashes in the interpreter); the gpu
test repeats the same comparisons on CUDA with fp32 and bf16.
"""
import importlib
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest
import torch
from _kernel_cases import (COEFFS, LAM, assert_close, check_loss, check_loss_row, check_update, check_update_row,
                           coefficient_row, count_launches, delta_shape, gen, leaf, row_launches)

ROOT = pathlib.Path(__file__).resolve().parents[1]


K = importlib.import_module("pdfast.kernels")
# The public functions shadow their same-named modules as package attributes: reach the modules by name.
UPDATE = importlib.import_module("pdfast.kernels.ddpm_update")
LOSS = importlib.import_module("pdfast.kernels.shift_loss")
LSTSQ = importlib.import_module("pdfast.kernels.lstsq")

SHAPES = [(3, 3, 5, 5), (1, 3, 5, 5), (7, 1, 9, 9)]


@pytest.fixture
def force_triton(monkeypatch):
    monkeypatch.setenv("PDFAST_FORCE_TRITON", "1")
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def check_lstsq(shape, delta_form, device="cpu", dtype=torch.float32, tol=1e-5):
    generator = gen(shape, delta_form)
    eps_hat = leaf(shape, device, dtype, generator, False)
    delta = leaf(delta_shape(shape, delta_form), device, dtype, generator, False)
    lam = K.lstsq_scale(eps_hat, delta)
    assert lam.dim() == 0 and lam.dtype == torch.float32
    assert_close(lam, K.lstsq_scale_ref(eps_hat, delta), tol)
    # Synthetic eq. 15 case: noise with zero batch mean plus 0.37 delta has least-squares scale exactly 0.37.
    z = torch.randn(shape, generator=generator, dtype=torch.float64)
    z = z - z.mean(0, keepdim=True)
    eps_hat = (z + 0.37 * delta.double().cpu()).to(device=device, dtype=dtype)
    assert abs(K.lstsq_scale(eps_hat, delta).item() - 0.37) < (1e-5 if dtype == torch.float32 else 2e-2)


# ---------------------------------------------------------------- Triton path under the interpreter (fp32)


@pytest.mark.triton_interpreter
@pytest.mark.parametrize("with_noise", [False, True], ids=["no_noise", "noise"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_ddpm_update_matches_reference(force_triton, shape, with_noise):
    check_update(shape, with_noise)


@pytest.mark.triton_interpreter
@pytest.mark.parametrize("requires", [("x",), ("eps",), ("noise",), ("eps", "noise")], ids=lambda r: "+".join(r))
def test_ddpm_update_partial_gradients(force_triton, requires):
    """The backward writes only the gradients asked for (the chain's case: x and eps)."""
    check_update((3, 3, 5, 5), True, grad_mask={n: n in requires for n in ("x", "eps", "noise")})


@pytest.mark.triton_interpreter
def test_ddpm_update_non_contiguous(force_triton):
    x = torch.randn(3, 5, 5, 3).permute(0, 3, 1, 2).requires_grad_()  # channels-last view
    eps = torch.randn(3, 3, 5, 10)[..., ::2].requires_grad_()
    noise = torch.randn(5, 3, 3, 5).transpose(0, 2).requires_grad_()
    out = K.ddpm_update(x, eps, *COEFFS, noise=noise)
    ref = K.ddpm_update_ref(x, eps, *COEFFS, noise=noise)
    assert_close(out, ref, 1e-5)
    for a, b in zip(torch.autograd.grad(out.sum(), (x, eps, noise)), torch.autograd.grad(ref.sum(), (x, eps, noise))):
        assert_close(a, b, 1e-5)


@pytest.mark.triton_interpreter
@pytest.mark.parametrize("norm", ["l1", "l2"])
@pytest.mark.parametrize("delta_form", ["chw", "1chw"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_shift_loss_matches_reference(force_triton, shape, delta_form, norm):
    check_loss(shape, delta_form, norm)


@pytest.mark.triton_interpreter
def test_shift_loss_l1_sign_of_zero(force_triton):
    """Where d = 0 exactly the l1 gradient is 0 (torch.sign(0) = 0), not +-1/N."""
    delta = torch.tensor([[0.5, -1.0], [2.0, 0.25]]).reshape(1, 1, 2, 2).requires_grad_()
    eps_hat = (LAM * delta.detach()).expand(2, 1, 2, 2).clone()  # B = 2: (v + v) / 2 == v exactly
    eps_hat[:, 0, 0, 0] += 1.0  # one nonzero element of d
    eps_hat.requires_grad_()
    check_loss(None, None, "l1", eps_hat=eps_hat, delta=delta)
    geps, gdelta = torch.autograd.grad(K.shift_loss(eps_hat, delta, LAM, "l1"), (eps_hat, delta))
    assert (gdelta.flatten()[1:] == 0).all() and gdelta.flatten()[0] != 0


@pytest.mark.triton_interpreter
@pytest.mark.parametrize("delta_form", ["chw", "1chw"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_lstsq_scale_matches_reference(force_triton, shape, delta_form):
    check_lstsq(shape, delta_form)


@pytest.mark.triton_interpreter
def test_lstsq_scale_no_grad(force_triton):
    eps_hat, delta = torch.randn(2, 3, 4, 4, requires_grad=True), torch.randn(3, 4, 4, requires_grad=True)
    assert not K.lstsq_scale(eps_hat, delta).requires_grad


# ---------------------------------------------------------------- row forms: coefficients read on the device


def _row_counts(update=0, loss=0):
    return {"_ddpm_update_fwd_kernel": update, "_ddpm_update_bwd_kernel": update, "_batch_mean_fwd_kernel": loss,
            "_shift_loss_bwd_kernel": loss}


@pytest.mark.triton_interpreter
@pytest.mark.parametrize("with_noise", [False, True], ids=["no_noise", "noise"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_ddpm_update_row_matches_torch_formula(force_triton, monkeypatch, shape, with_noise):
    """ddpm_update_row (the engine's recomputed step) equals the torch formula with the same tensor coefficients,
    values and gradients, through one launch of each Triton kernel in its device-row form; and it is the float
    form's arithmetic bit for bit."""
    counts = count_launches(monkeypatch)
    out, x, eps, noise, row = check_update_row(shape, with_noise)
    assert row_launches(counts) == _row_counts(update=1)
    assert torch.equal(out, K.ddpm_update(x, eps, *row.tolist(), noise=noise))


@pytest.mark.triton_interpreter
@pytest.mark.parametrize("norm", ["l1", "l2"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_shift_loss_row_matches_torch_formula(force_triton, monkeypatch, shape, norm):
    counts = count_launches(monkeypatch)
    loss, eps_hat, delta, lam = check_loss_row(shape, norm)
    assert row_launches(counts) == _row_counts(loss=1)
    assert torch.equal(loss, K.shift_loss(eps_hat, delta, float(lam), norm))


@pytest.mark.triton_interpreter
@pytest.mark.parametrize("setting", ["", "torch", "triton"], ids=["auto", "torch", "triton"])
def test_row_forms_dispatch(monkeypatch, setting):
    """On CPU tensors the row forms run the torch formula unless Triton is asked for (PDFAST_KERNELS=triton), and
    PDFAST_KERNELS=torch keeps the formula even under PDFAST_FORCE_TRITON=1."""
    monkeypatch.setenv("PDFAST_KERNELS", setting)
    monkeypatch.setenv("PDFAST_FORCE_TRITON", "1" if setting == "torch" else "0")
    counts = count_launches(monkeypatch)
    x, delta = torch.randn(2, 3, 4, 4), torch.randn(1, 3, 4, 4)
    row, lam = coefficient_row(COEFFS, "cpu"), coefficient_row([LAM], "cpu")[0]
    assert_close(K.ddpm_update_row(x, x, row, noise=x), K.ddpm_update_ref(x, x, *row, noise=x), 1e-6)
    assert_close(K.shift_loss_row(x, delta, lam, "l2"), K.shift_loss_ref(x, delta, lam, "l2"), 1e-6)
    launched = int(setting == "triton")  # forward kernels only: nothing here asks for a gradient
    assert row_launches(counts) == {**_row_counts(), "_ddpm_update_fwd_kernel": launched,
                                    "_batch_mean_fwd_kernel": launched}


def test_row_forms_refuse_bad_coefficients():
    x = torch.randn(2, 3, 4, 4)
    bad = [(torch.ones(2), "at least 3"), (torch.ones(3, dtype=torch.long), "floating"),
           (torch.ones(6)[::2], "contiguous"), (torch.ones(3, requires_grad=True), "no gradient"),
           (torch.ones(3, device="meta"), "on meta"), (torch.ones(1, 3), "one dimension")]
    for row, match in bad:
        with pytest.raises(ValueError, match=match) as err:
            K.ddpm_update_row(x, x, row)
        assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="at least 1"):
        K.shift_loss_row(x, x[:1], 0.5, "l1")  # a float lam belongs to shift_loss
    with pytest.raises(ValueError, match="norm"):
        K.shift_loss_row(x, x[:1], torch.tensor(0.5), "l3")


# ---------------------------------------------------------------- dispatch, validation, references


def _boom(*args, **kwargs):
    raise AssertionError("Triton launcher called")


@pytest.mark.triton_interpreter
def test_cpu_dispatch_uses_reference(monkeypatch):
    monkeypatch.delenv("PDFAST_FORCE_TRITON", raising=False)
    for mod, name in ((UPDATE, "_ddpm_update_fwd"), (LOSS, "_shift_loss_fwd"), (LSTSQ, "_lstsq_scale_fwd")):
        monkeypatch.setattr(mod, name, _boom)
    x, delta = torch.randn(2, 3, 4, 4), torch.randn(1, 3, 4, 4)
    torch.testing.assert_close(K.ddpm_update(x, x, *COEFFS, noise=x), K.ddpm_update_ref(x, x, *COEFFS, noise=x))
    torch.testing.assert_close(K.shift_loss(x, delta, LAM), K.shift_loss_ref(x, delta, LAM))
    torch.testing.assert_close(K.lstsq_scale(x, delta), K.lstsq_scale_ref(x, delta))
    # ... and PDFAST_FORCE_TRITON=1 does reach the launchers.
    monkeypatch.setenv("PDFAST_FORCE_TRITON", "1")
    for call in (lambda: K.ddpm_update(x, x, *COEFFS), lambda: K.shift_loss(x, delta, LAM),
                 lambda: K.lstsq_scale(x, delta)):
        with pytest.raises(AssertionError, match="launcher called"):
            call()


def test_import_without_triton():
    """pdfast.kernels imports and runs its reference path with triton unimportable."""
    code = textwrap.dedent("""
        import sys
        sys.modules["triton"] = None  # any `import triton` now raises ImportError
        import torch
        import pdfast.kernels as K
        x = torch.randn(2, 3, 4, 4)
        K.ddpm_update(x, x, 1.0, 0.1, 0.1, noise=x); K.shift_loss(x, x[0], 0.5); K.lstsq_scale(x, x[0])
        """)
    env = {k: v for k, v in os.environ.items() if k != "PDFAST_FORCE_TRITON"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=ROOT, timeout=120)


def test_validation_errors():
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match="norm"):
        K.shift_loss(x, x[0], LAM, norm="huber")
    with pytest.raises(ValueError, match="norm"):
        K.shift_loss_ref(x, x[0], LAM, norm="l3")
    with pytest.raises(ValueError, match="noise"):
        K.ddpm_update(x, x, *COEFFS, noise=x[:1])
    with pytest.raises(ValueError, match="eps"):
        K.ddpm_update(x, x[:1], *COEFFS)
    with pytest.raises(TypeError, match="delta"):  # the trigger add is not part of the update
        K.ddpm_update(x, x, *COEFFS, delta=x[0])
    with pytest.raises(ValueError, match="delta"):
        K.lstsq_scale(x, torch.randn(3, 4, 5))


def test_references_gradcheck():
    torch.manual_seed(0)
    f64 = dict(dtype=torch.float64, requires_grad=True)
    x, eps, noise = (torch.randn(2, 2, 3, 3, **f64) for _ in range(3))
    delta = torch.randn(2, 3, 3, **f64)
    assert torch.autograd.gradcheck(lambda *t: K.ddpm_update_ref(t[0], t[1], *COEFFS, noise=t[2]), (x, eps, noise))
    delta1 = torch.randn(1, 2, 3, 3, **f64)
    for norm in ("l1", "l2"):  # random inputs keep every d away from the l1 kink at 0
        assert torch.autograd.gradcheck(lambda e, d: K.shift_loss_ref(e, d, LAM, norm), (eps, delta1))
    assert torch.autograd.gradcheck(K.lstsq_scale_ref, (eps, delta))


def test_reference_lstsq_recovers_scale():
    z = torch.randn(5, 3, 4, 4, dtype=torch.float64)
    delta = torch.randn(1, 3, 4, 4, dtype=torch.float64)
    assert abs(K.lstsq_scale_ref(z - z.mean(0, keepdim=True) + 0.37 * delta, delta).item() - 0.37) < 1e-12


# ---------------------------------------------------------------- CUDA (compiled kernels, fp32 and bf16)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_kernels_cuda(monkeypatch, dtype):
    # conftest sets TRITON_INTERPRET=1 for the CPU tests; the kernels must be compiled for the GPU here (kernels
    # are jitted per mode at launch, so this works in the same process as the interpreter tests).
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.delenv("PDFAST_FORCE_TRITON", raising=False)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    assert K.use_triton(torch.empty(1, device="cuda"))
    for shape in SHAPES + [(40, 3, 32, 32)]:
        for with_noise in (False, True):
            check_update(shape, with_noise, device="cuda", dtype=dtype, tol=tol)
        check_update(shape, True, device="cuda", dtype=dtype, tol=tol,
                     grad_mask={"x": True, "eps": True, "noise": False})
        for delta_form in ("chw", "1chw"):
            for norm in ("l1", "l2"):
                check_loss(shape, delta_form, norm, device="cuda", dtype=dtype, tol=tol)
            check_lstsq(shape, delta_form, device="cuda", dtype=dtype, tol=tol)
    torch.cuda.synchronize()


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_row_kernels_cuda(monkeypatch, dtype):
    """The row forms on the GPU: compiled Triton kernels reading their coefficients from device memory."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.delenv("PDFAST_FORCE_TRITON", raising=False)
    counts = count_launches(monkeypatch)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    for shape in SHAPES + [(40, 3, 32, 32)]:
        for with_noise in (False, True):
            check_update_row(shape, with_noise, device="cuda", dtype=dtype, tol=tol)
        for norm in ("l1", "l2"):
            check_loss_row(shape, norm, device="cuda", dtype=dtype, tol=tol)
    torch.cuda.synchronize()
    assert all(n > 0 for n in row_launches(counts).values()), counts
