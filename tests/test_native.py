"""The fused ops on every backend present (native, triton, torch) against the torch references, plus the native
library's loader, build and dispatch.

Each op test is parametrised over (device, backend): PDFAST_KERNELS forces the backend and a spy on the backend's
entry point checks that it really ran. Native cases are skipped (with the loader's reason) only when the library is
not built: `python -m pdfast.kernels.native_build`. Triton runs on CPU under TRITON_INTERPRET=1 (fp32 only); CUDA
cases need a GPU. fp64 and gradcheck run on native and torch (the Triton kernels compute in fp32).
"""
import importlib
import importlib.util
import json
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap
from collections import Counter
from types import SimpleNamespace

import pytest
import torch
from _kernel_cases import COEFFS, LAM, assert_close, check_loss, check_update, delta_shape, gen, leaf

ROOT = pathlib.Path(__file__).resolve().parents[1]

K = importlib.import_module("pdfast.kernels")
N = importlib.import_module("pdfast.kernels.native")
UPDATE = importlib.import_module("pdfast.kernels.ddpm_update")
LOSS = importlib.import_module("pdfast.kernels.shift_loss")
LSTSQ = importlib.import_module("pdfast.kernels.lstsq")

# Odd shapes: batch 1, one channel, per-image sizes below one vector, and 5x3x17x23 (1173 per image: more than one
# 1024-position tile of the native batch reductions, and a ragged vector tail).
SHAPES = [(3, 3, 5, 5), (1, 3, 5, 5), (7, 1, 9, 9), (5, 3, 17, 23)]
TOL = {torch.float32: 1e-5, torch.float64: 1e-10}

# The function each backend's path calls, per op: the spies below count calls to these module attributes.
ENTRY = {
    "native": {"ddpm_update": (N, "ddpm_update"), "shift_loss": (N, "shift_loss"), "lstsq_scale": (N, "lstsq_scale")},
    "triton": {"ddpm_update": (UPDATE, "_ddpm_update_fwd"), "shift_loss": (LOSS, "_shift_loss_fwd"),
               "lstsq_scale": (LSTSQ, "_lstsq_scale_fwd")},
    "torch": {"ddpm_update": (UPDATE, "ddpm_update_ref"), "shift_loss": (LOSS, "shift_loss_ref"),
              "lstsq_scale": (LSTSQ, "lstsq_scale_ref")},
}


def _native_skip(device: str):
    if not N.available():
        pytest.skip(f"native library not available: {N.status()}")
    if device not in N.devices():
        pytest.skip(f"native library built without {device} kernels (built for: {', '.join(N.devices())})")


def _backend_params():
    params = []
    for device in ("cpu", "cuda"):
        for backend in ("native", "triton", "torch"):
            marks = [pytest.mark.gpu] if device == "cuda" else []
            if backend == "triton" and device == "cpu":
                marks.append(pytest.mark.triton_interpreter)
            params.append(pytest.param((device, backend), id=f"{device}-{backend}", marks=marks))
    return params


@pytest.fixture(params=_backend_params())
def backend(request, monkeypatch):
    """(device, backend) with PDFAST_KERNELS forcing the backend and spies counting its entry points."""
    device, name = request.param
    monkeypatch.delenv("PDFAST_FORCE_TRITON", raising=False)
    monkeypatch.setenv("PDFAST_KERNELS", name)
    if name == "native":
        _native_skip(device)
    if name == "triton":
        if importlib.util.find_spec("triton") is None:
            pytest.skip("triton is not installed")
        monkeypatch.setenv("TRITON_INTERPRET", "1" if device == "cpu" else "0")
    calls = Counter()
    for op, (module, attr) in ENTRY[name].items():
        original = getattr(module, attr)

        def spy(*args, _op=op, _original=original, **kwargs):
            calls[_op] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(module, attr, spy)
    return SimpleNamespace(device=device, name=name, calls=calls)


def _dtype(backend, dtype):
    if dtype == torch.float64 and backend.name == "triton":
        pytest.skip("the Triton kernels compute in fp32: fp64 is checked on native and torch")
    return dtype


def _ran(backend, op, before):
    assert backend.calls[op] > before, f"{op} did not run on the {backend.name} backend"


# ---------------------------------------------------------------- ddpm_update


def check_update_ran(backend, shape, with_noise, dtype, grad_mask=None):
    """check_update on the backend's device, which must run ddpm_update on that backend."""
    before = backend.calls["ddpm_update"]
    check_update(shape, with_noise, backend.device, dtype, TOL[dtype], grad_mask)
    _ran(backend, "ddpm_update", before)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("with_noise", [False, True], ids=["no_noise", "noise"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_ddpm_update(backend, shape, with_noise, dtype):
    check_update_ran(backend, shape, with_noise, _dtype(backend, dtype))


@pytest.mark.parametrize("requires", [("x",), ("eps",), ("noise",), ("x", "eps"), ("eps", "noise")],
                         ids=lambda r: "+".join(r))
def test_ddpm_update_partial_gradients(backend, requires):
    """The backward writes only the gradients asked for (the chain's case: x and eps, noise a constant)."""
    check_update_ran(backend, (5, 3, 17, 23), True, torch.float32,
                     grad_mask={n: n in requires for n in ("x", "eps", "noise")})


def test_ddpm_update_grad_of_one_input_only(backend):
    """autograd.grad asking for a subset of the inputs that require grad gets exactly those."""
    x, eps, noise = (torch.randn(4, 3, 5, 5, device=backend.device, requires_grad=True) for _ in range(3))
    out = K.ddpm_update(x, eps, *COEFFS, noise=noise)
    (gn,) = torch.autograd.grad(out.sum(), (noise,), retain_graph=True)
    assert_close(gn, torch.full_like(noise, COEFFS[2]), 1e-6)
    (ge,) = torch.autograd.grad(out.sum(), (eps,))
    assert_close(ge, torch.full_like(eps, -COEFFS[0] * COEFFS[1]), 1e-6)


def test_ddpm_update_non_contiguous(backend):
    dev = backend.device
    x = torch.randn(3, 5, 5, 3, device=dev).permute(0, 3, 1, 2).requires_grad_()  # channels-last view
    eps = torch.randn(3, 3, 5, 10, device=dev)[..., ::2].requires_grad_()
    noise = torch.randn(5, 3, 3, 5, device=dev).transpose(0, 2).requires_grad_()
    out = K.ddpm_update(x, eps, *COEFFS, noise=noise)
    ref = K.ddpm_update_ref(x, eps, *COEFFS, noise=noise)
    assert_close(out, ref, 1e-5)
    for a, b in zip(torch.autograd.grad(out.sum(), (x, eps, noise)), torch.autograd.grad(ref.sum(), (x, eps, noise))):
        assert_close(a, b, 1e-5)


def test_ddpm_update_mixed_dtypes(backend):
    """Result dtype = promotion of the inputs, computed in at least fp32; gradients in each input's dtype."""
    if backend.name == "triton":
        pytest.skip("bf16 crashes the Triton interpreter; the CUDA Triton path is covered in test_kernels")
    dev = backend.device
    generator = gen("mixed")
    for xd, nd in ((torch.bfloat16, torch.bfloat16), (torch.float32, torch.float64), (torch.bfloat16, torch.float32)):
        x = leaf((3, 3, 4, 4), dev, xd, generator)
        eps = leaf((3, 3, 4, 4), dev, xd, generator)
        noise = leaf((3, 3, 4, 4), dev, nd, generator)
        out = K.ddpm_update(x, eps, *COEFFS, noise=noise)
        ref = K.ddpm_update_ref(x, eps, *COEFFS, noise=noise)
        tol = 1e-2 if out.dtype == torch.bfloat16 else 1e-5
        assert_close(out, ref, tol)
        for a, b in zip(torch.autograd.grad(out.float().sum(), (x, eps, noise)),
                        torch.autograd.grad(ref.float().sum(), (x, eps, noise))):
            assert_close(a, b, tol)


def test_ddpm_update_chain_size(backend):
    """Batch 40 x 3x32x32, the chain state: several parallel tasks in the native kernels."""
    check_update_ran(backend, (40, 3, 32, 32), True, torch.float32)


# ---------------------------------------------------------------- shift_loss


def check_loss_ran(backend, shape, delta_form, norm, dtype, eps_hat=None, delta=None):
    """check_loss on the backend's device, which must run shift_loss on that backend (the Triton loss is fp32)."""
    before = backend.calls["shift_loss"]
    check_loss(shape, delta_form, norm, backend.device, dtype, TOL[dtype], eps_hat, delta,
               loss_dtype=torch.float32 if backend.name == "triton" else None)
    _ran(backend, "shift_loss", before)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("norm", ["l1", "l2"])
@pytest.mark.parametrize("delta_form", ["chw", "1chw"])
@pytest.mark.parametrize("shape", SHAPES + [(40, 3, 32, 32)], ids=lambda s: "x".join(map(str, s)))
def test_shift_loss(backend, shape, delta_form, norm, dtype):
    check_loss_ran(backend, shape, delta_form, norm, _dtype(backend, dtype))


def test_shift_loss_l1_sign_of_zero(backend):
    """Where d = 0 exactly the l1 gradient is 0 (torch.sign(0) = 0), not +-1/N."""
    dev = backend.device
    delta = torch.tensor([[0.5, -1.0], [2.0, 0.25]], device=dev).reshape(1, 1, 2, 2).requires_grad_()
    eps_hat = (LAM * delta.detach()).expand(2, 1, 2, 2).clone()  # B = 2: (v + v) / 2 == v exactly
    eps_hat[:, 0, 0, 0] += 1.0
    eps_hat.requires_grad_()
    check_loss_ran(backend, None, None, "l1", torch.float32, eps_hat=eps_hat, delta=delta)
    _, gdelta = torch.autograd.grad(K.shift_loss(eps_hat, delta, LAM, "l1"), (eps_hat, delta))
    assert (gdelta.flatten()[1:] == 0).all() and gdelta.flatten()[0] != 0


def test_shift_loss_one_gradient(backend):
    """Only the trigger's gradient (the inversion case)."""
    eps_hat = torch.randn(6, 3, 7, 7, device=backend.device)
    delta = torch.randn(1, 3, 7, 7, device=backend.device, requires_grad=True)
    (got,) = torch.autograd.grad(K.shift_loss(eps_hat, delta, LAM, "l2"), (delta,))
    (want,) = torch.autograd.grad(K.shift_loss_ref(eps_hat, delta, LAM, "l2"), (delta,))
    assert_close(got, want, 1e-5)


# ---------------------------------------------------------------- lstsq_scale


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("delta_form", ["chw", "1chw"])
@pytest.mark.parametrize("shape", SHAPES + [(40, 3, 32, 32)], ids=lambda s: "x".join(map(str, s)))
def test_lstsq_scale(backend, shape, delta_form, dtype):
    dtype = _dtype(backend, dtype)
    generator = gen(shape, delta_form)
    eps_hat = leaf(shape, backend.device, dtype, generator, False)
    delta = leaf(delta_shape(shape, delta_form), backend.device, dtype, generator, False)
    before = backend.calls["lstsq_scale"]
    lam = K.lstsq_scale(eps_hat, delta)
    _ran(backend, "lstsq_scale", before)
    ref = K.lstsq_scale_ref(eps_hat, delta)
    assert lam.dim() == 0 and lam.dtype == (torch.float32 if backend.name == "triton" else ref.dtype)
    assert_close(lam.to(ref.dtype), ref, TOL[dtype])
    # Noise with zero batch mean plus 0.37 delta has least-squares scale exactly 0.37 (eq. 15).
    z = torch.randn(shape, generator=generator, dtype=torch.float64)
    z = z - z.mean(0, keepdim=True)
    eps_hat = (z + 0.37 * delta.double().cpu()).to(device=backend.device, dtype=dtype)
    assert abs(K.lstsq_scale(eps_hat, delta).item() - 0.37) < (1e-5 if dtype == torch.float32 else 1e-12)


def test_lstsq_scale_no_grad(backend):
    eps_hat = torch.randn(2, 3, 4, 4, device=backend.device, requires_grad=True)
    delta = torch.randn(3, 4, 4, device=backend.device, requires_grad=True)
    assert not K.lstsq_scale(eps_hat, delta).requires_grad


def test_lstsq_scale_zero_delta_is_nan(backend):
    assert torch.isnan(K.lstsq_scale(torch.randn(2, 3, 4, 4, device=backend.device),
                                     torch.zeros(3, 4, 4, device=backend.device)))


# ---------------------------------------------------------------- gradcheck (fp64: native and torch)


def test_gradcheck(backend):
    _dtype(backend, torch.float64)
    dev = backend.device
    torch.manual_seed(0)
    f64 = dict(dtype=torch.float64, device=dev, requires_grad=True)
    x, eps, noise = (torch.randn(2, 2, 3, 3, **f64) for _ in range(3))
    delta = torch.randn(2, 3, 3, **f64)
    assert torch.autograd.gradcheck(lambda *t: K.ddpm_update(t[0], t[1], *COEFFS, noise=t[2]), (x, eps, noise))
    assert torch.autograd.gradcheck(lambda *t: K.ddpm_update(t[0], t[1], *COEFFS), (x, eps))
    delta1 = torch.randn(1, 2, 3, 3, **f64)
    for norm in ("l1", "l2"):  # random inputs keep every d away from the l1 kink at 0
        assert torch.autograd.gradcheck(lambda e, d: K.shift_loss(e, d, LAM, norm), (eps, delta1))
    # lstsq_scale is measured under no_grad; its op is differentiable too (native: the raw op, torch: the reference).
    lstsq = N.lstsq_scale if backend.name == "native" else K.lstsq_scale_ref
    assert torch.autograd.gradcheck(lstsq, (eps, delta))
    assert backend.calls["ddpm_update"] >= 2 and backend.calls["shift_loss"] >= 2


# ---------------------------------------------------------------- native library: ops, schema, loader


@pytest.fixture
def native_cpu():
    _native_skip("cpu")


def test_native_ops_registered(native_cpu):
    assert N.devices()[0] == "cpu"
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    out = torch.ops.pdfast.ddpm_update(x, x.detach(), *COEFFS, x.detach())
    assert "pdfast::DDPMUpdate" in out.grad_fn.name()
    with torch.no_grad():
        assert torch.ops.pdfast.ddpm_update(x, x, *COEFFS).grad_fn is None
    assert "pdfast::ShiftLoss" in torch.ops.pdfast.shift_loss(x, x.detach()[0], LAM, True).grad_fn.name()
    assert "pdfast::LstsqScale" in torch.ops.pdfast.lstsq_scale(x, x.detach()[0]).grad_fn.name()
    info = N.build_info()
    assert info["torch"] == torch.__version__ and info["library"] in N.library_path().name


@pytest.mark.parametrize("call, match", [
    (lambda x: torch.ops.pdfast.ddpm_update(x, x[:1], 1.0, 0.1, 0.1), "eps must have the shape of x"),
    (lambda x: torch.ops.pdfast.ddpm_update(x, x, 1.0, 0.1, 0.1, x[:1, :1]), "noise must have the shape"),
    (lambda x: torch.ops.pdfast.ddpm_update(x.long(), x.long(), 1.0, 0.1, 0.1), "floating point"),
    (lambda x: torch.ops.pdfast.shift_loss(x, x[0, :2], 0.5), "eps_hat must be"),
    (lambda x: torch.ops.pdfast.shift_loss(x[:0], x[0], 0.5), "B >= 1"),
    (lambda x: torch.ops.pdfast.lstsq_scale(x, torch.randn(3, 4, 5)), "delta"),
    (lambda x: torch.ops.pdfast.ddpm_update(x, x, 1.0, 0.1, 0.1, x.to("meta")), "noise is on meta"),
], ids=["eps", "noise", "dtype", "loss-delta", "empty-batch", "lstsq-delta", "device"])
def test_native_op_errors_are_one_line(native_cpu, call, match):
    with pytest.raises(RuntimeError, match=match) as err:
        call(torch.randn(2, 3, 4, 4))
    assert "\n" not in str(err.value) and str(err.value).startswith("pdfast::")


def test_native_empty_batch(native_cpu):
    x, eps, noise = (torch.randn(0, 3, 4, 4, requires_grad=True) for _ in range(3))
    out = K.ddpm_update(x, eps, *COEFFS, noise=noise)
    assert out.shape == x.shape and "pdfast::DDPMUpdate" in out.grad_fn.name()
    grads = torch.autograd.grad(out.sum(), (x, eps, noise))
    assert [tuple(g.shape) for g in grads] == [(0, 3, 4, 4)] * 3


def test_native_threads(native_cpu, monkeypatch):
    """Two threads: several parallel_for / parallel_reduce tasks per op (tile and task boundaries, partial sums)."""
    monkeypatch.setenv("PDFAST_KERNELS", "native")
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for shape in ((40, 3, 32, 32), (2, 3, 64, 64)):
            generator = gen("threads", shape)
            x, eps, noise, eps_hat = (leaf(shape, "cpu", torch.float32, generator) for _ in range(4))
            delta = leaf((1, *shape[1:]), "cpu", torch.float32, generator)
            for norm in ("l1", "l2"):
                got, want = K.shift_loss(eps_hat, delta, LAM, norm), K.shift_loss_ref(eps_hat, delta, LAM, norm)
                assert "pdfast::ShiftLoss" in got.grad_fn.name()
                assert_close(got, want, 1e-5)
                grads = zip(torch.autograd.grad(got, (eps_hat, delta)), torch.autograd.grad(want, (eps_hat, delta)))
                for a, b in grads:
                    assert_close(a, b, 1e-5)
            assert_close(K.lstsq_scale(eps_hat, delta), K.lstsq_scale_ref(eps_hat, delta), 1e-5)
            for z in (noise, None):
                got = K.ddpm_update(x, eps, *COEFFS, noise=z)
                want = K.ddpm_update_ref(x, eps, *COEFFS, noise=z)
                assert "pdfast::DDPMUpdate" in got.grad_fn.name()
                assert_close(got, want, 1e-5)
                inputs = tuple(t for t in (x, eps, z) if t is not None)
                for a, b in zip(torch.autograd.grad(got, inputs, eps), torch.autograd.grad(want, inputs, eps)):
                    assert_close(a, b, 1e-5)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("capability", ["default", "avx2", "avx512"])
def test_native_cpu_capabilities(native_cpu, capability):
    """Each compiled CPU kernel table against the references (picked like torch's own: ATEN_CPU_CAPABILITY lowers
    it)."""
    order = ["DEFAULT", "AVX2", "AVX512"]
    best = torch.backends.cpu.get_cpu_capability().upper()  # this process: the CPU's best unless the env lowered it
    if best in order and order.index(capability.upper()) > order.index(best):
        # torch obeys ATEN_CPU_CAPABILITY without checking the CPU: asking for more runs illegal instructions
        pytest.skip(f"this CPU runs at most {best}, not {capability}")
    proc = _python("""
        import torch, pdfast.kernels as K
        assert K.native.available(), K.native.status()
        print(torch.backends.cpu.get_cpu_capability(), torch.ops.pdfast.cpu_capability())
        for dtype, tol in ((torch.float32, 1e-5), (torch.float64, 1e-10)):
            for shape in ((5, 3, 17, 23), (40, 3, 32, 32), (3, 1, 2, 3)):
                g = torch.Generator().manual_seed(0)
                x, e, n, eh, up = (torch.randn(shape, generator=g, dtype=dtype, requires_grad=True) for _ in range(5))
                d = torch.randn((1, *shape[1:]), generator=g, dtype=dtype, requires_grad=True)
                def close(a, b):
                    torch.testing.assert_close(a, b, rtol=tol, atol=tol * b.abs().max().item())
                for args in ((x, e, 1.01, 0.04, 0.2), ):
                    for kw in (dict(noise=n), dict()):
                        out, ref = K.ddpm_update(*args, **kw), K.ddpm_update_ref(*args, **kw)
                        assert "pdfast" in out.grad_fn.name()
                        close(out, ref)
                        ins = (x, e, *kw.values())
                        for a, b in zip(torch.autograd.grad(out, ins, up), torch.autograd.grad(ref, ins, up)):
                            close(a, b)
                for norm in ("l1", "l2"):
                    out, ref = K.shift_loss(eh, d, 0.37, norm), K.shift_loss_ref(eh, d, 0.37, norm)
                    close(out, ref)
                    for a, b in zip(torch.autograd.grad(out, (eh, d)), torch.autograd.grad(ref, (eh, d))):
                        close(a, b)
                close(K.lstsq_scale(eh, d), K.lstsq_scale_ref(eh, d).detach())
        """, ATEN_CPU_CAPABILITY=capability, OMP_NUM_THREADS="1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    torch_choice, ours = proc.stdout.split()
    if torch_choice.upper() != capability.upper():
        pytest.skip(f"this CPU or torch build does not run {capability} (torch picked {torch_choice})")
    assert ours == capability.upper() or (capability == "avx512" and ours == "AVX2"
                                          and "AVX512" not in N.build_info().get("cpu_capabilities", ""))


@pytest.mark.parametrize("op", ["ddpm_update", "shift_loss", "lstsq_scale"])
def test_native_opcheck(native_cpu, op):
    """torch.library.opcheck: schema, autograd registration, FakeTensor (Meta) kernels, AOT dispatch."""
    if not hasattr(torch.library, "opcheck"):
        pytest.skip("torch.library.opcheck needs torch >= 2.4")
    x, eps, noise = (torch.randn(3, 2, 4, 4, dtype=torch.float64, requires_grad=True) for _ in range(3))
    delta = torch.randn(1, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    args = {"ddpm_update": (x, eps, *COEFFS, noise), "shift_loss": (eps, delta, LAM, True),
            "lstsq_scale": (eps, delta)}[op]
    torch.library.opcheck(getattr(torch.ops.pdfast, op).default, args)


# ---------------------------------------------------------------- dispatch and settings


def _fake(device_type):
    """A stand-in tensor on `device_type` for the dispatch decision (CUDA tensors cannot be made without a GPU)."""
    return SimpleNamespace(device=torch.device(device_type), is_cuda=device_type == "cuda", is_cpu=device_type == "cpu")


def test_auto_dispatch(monkeypatch):
    monkeypatch.delenv("PDFAST_KERNELS", raising=False)
    monkeypatch.delenv("PDFAST_FORCE_TRITON", raising=False)
    cpu = "native" if N.available() else "torch"
    for op in K.backends("cpu"):
        assert K.select_backend(op, torch.empty(1)) == cpu
        assert K.select_backend(op, _fake("cuda")) == "triton"  # CUDA tensors: Triton in auto mode
        assert K.select_backend(op, _fake("meta")) == "torch"  # no native Meta dispatch for real work
    assert K.backends("cpu") == dict.fromkeys(K.backends("cpu"), cpu)
    assert K.backends(torch.device("cuda")) == dict.fromkeys(K.backends("cpu"), "triton")
    assert K.backends("no-such-device") == dict.fromkeys(K.backends("cpu"), "error: unknown device 'no-such-device'")
    assert not K.use_triton(torch.empty(1)) and K.use_triton(_fake("cuda"))
    monkeypatch.setenv("PDFAST_FORCE_TRITON", "1")
    assert K.select_backend("ddpm_update", torch.empty(1)) == "triton" and K.use_triton(torch.empty(1))


@pytest.mark.parametrize("forced", ["torch", "triton", "TORCH "])
def test_forced_backend(monkeypatch, forced):
    monkeypatch.setenv("PDFAST_KERNELS", forced)
    monkeypatch.setenv("PDFAST_FORCE_TRITON", "1")  # PDFAST_KERNELS wins over the legacy switch
    want = forced.strip().lower()
    for device in ("cpu", "cuda"):
        assert K.backends(device) == dict.fromkeys(K.backends(device), want)
    assert K.use_triton(torch.empty(1)) == (want == "triton")


def test_forced_native(monkeypatch):
    monkeypatch.setenv("PDFAST_KERNELS", "native")
    if N.available():
        assert K.select_backend("shift_loss", torch.empty(1)) == "native"
    if "cuda" not in N.devices():  # no native CUDA kernels: a one-line error, not a silent fallback
        with pytest.raises(K.NativeUnavailableError, match="PDFAST_KERNELS=native but") as err:
            K.select_backend("ddpm_update", _fake("cuda"))
        assert "\n" not in str(err.value)
        assert K.backends("cuda")["ddpm_update"] == "error: native unavailable"


def test_bad_setting(monkeypatch):
    monkeypatch.setenv("PDFAST_KERNELS", "cuda")
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(K.KernelSettingError, match="PDFAST_KERNELS must be one of auto, native, triton, torch"):
        K.ddpm_update(x, x, *COEFFS)
    from pdfast.errors import PdfastError  # the CLI prints PdfastError as one line

    assert issubclass(K.KernelSettingError, (PdfastError, ValueError))
    assert issubclass(K.NativeUnavailableError, (PdfastError, RuntimeError))
    assert K.backends("cpu")["shift_loss"] == "error: bad PDFAST_KERNELS"


def test_env_reports_backends(monkeypatch):
    from click.testing import CliRunner

    from pdfast.cli import main

    monkeypatch.delenv("PDFAST_KERNELS", raising=False)
    monkeypatch.delenv("PDFAST_FORCE_TRITON", raising=False)
    result = CliRunner().invoke(main, ["env", "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["kernels"]["cpu"] == K.backends("cpu") and info["native_library"] == N.status()
    text = CliRunner().invoke(main, ["env"]).output
    cpu = K.backends("cpu")["ddpm_update"]
    assert f"kernels: cpu: ddpm_update={cpu}, shift_loss={cpu}, lstsq_scale={cpu}" in text


# ---------------------------------------------------------------- loader, in fresh processes


def _python(code, **env_overrides):
    env = {k: v for k, v in os.environ.items() if k not in ("PDFAST_KERNELS", "PDFAST_FORCE_TRITON",
                                                            "PDFAST_NATIVE_LIB")}
    env.update(env_overrides)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=180)


def test_import_with_missing_library(tmp_path):
    """PDFAST_NATIVE_LIB at a missing file: imports work, nothing loads at import, ops fall back to torch, and
    forcing native is a one-line error."""
    missing = tmp_path / "nope" / "libpdfast_native.so"
    proc = _python("""
        import pdfast, pdfast.kernels as K
        from pdfast.kernels import native
        assert native._state is None, "loaded at import"
        import torch
        x = torch.randn(2, 3, 4, 4)
        K.ddpm_update(x, x, 1.0, 0.1, 0.1, noise=x); K.shift_loss(x, x[0], 0.5); K.lstsq_scale(x, x[0])
        assert not native.available() and K.backends("cpu") == dict.fromkeys(K.backends("cpu"), "torch")
        print(native.status())
        import os
        os.environ["PDFAST_KERNELS"] = "native"
        try:
            K.shift_loss(x, x[0], 0.5)
        except K.NativeUnavailableError as err:
            print(err)
        """, PDFAST_NATIVE_LIB=str(missing))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == f"PDFAST_NATIVE_LIB={missing} does not exist"
    assert lines[1].startswith("PDFAST_KERNELS=native but the native library cannot run shift_loss on cpu: "
                               f"PDFAST_NATIVE_LIB={missing}")


def test_cli_env_with_missing_library(tmp_path):
    missing = tmp_path / "libpdfast_native.so"
    proc = subprocess.run([sys.executable, "-c", "import sys; from pdfast.cli import main; sys.argv[1:] = ['env']; "
                           "main()"], capture_output=True, text=True, cwd=ROOT, timeout=180,
                          env={**{k: v for k, v in os.environ.items() if k != "PDFAST_KERNELS"},
                               "PDFAST_NATIVE_LIB": str(missing)})
    assert proc.returncode == 0, proc.stderr
    assert "kernels: cpu: ddpm_update=torch, shift_loss=torch, lstsq_scale=torch" in proc.stdout
    assert f"native_library: PDFAST_NATIVE_LIB={missing} does not exist" in proc.stdout


def test_corrupt_or_stale_library(tmp_path):
    """A file that is not a library, and a library built for another torch: reported, never raised."""
    bad = tmp_path / "bad" / "libpdfast_native.so"
    bad.parent.mkdir()
    bad.write_text("not an ELF file\n")
    stale = tmp_path / "stale" / "libpdfast_native.so"
    stale.parent.mkdir()
    stale.write_text("never loaded: the version check comes first\n")
    (stale.parent / "build_info.json").write_text(json.dumps({"torch": "0.0.1+cpu"}))
    code = """
        import pdfast.kernels as K, torch
        x = torch.randn(2, 3, 4, 4)
        assert K.ddpm_update(x, x, 1.0, 0.1, 0.1).shape == x.shape
        print(K.native.available(), K.native.status())
        """
    proc = _python(code, PDFAST_NATIVE_LIB=str(bad))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"False {bad} failed to load (OSError: ")
    proc = _python(code, PDFAST_NATIVE_LIB=str(stale))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"False {stale} was built against torch 0.0.1+cpu, this is torch {torch.__version__}")


def test_native_lib_env_points_at_a_copy(tmp_path, native_cpu):
    """PDFAST_NATIVE_LIB may point anywhere: a copy of the built library loads and runs natively."""
    copy = tmp_path / "elsewhere" / N.library_path().name
    copy.parent.mkdir()
    shutil.copy2(N.library_path(), copy)
    proc = _python("""
        import pdfast.kernels as K, torch
        x = torch.randn(3, 3, 4, 4, requires_grad=True)
        out = K.ddpm_update(x, x.detach(), 1.0, 0.1, 0.1)
        print(K.native.status()); print(out.grad_fn.name())
        """, PDFAST_NATIVE_LIB=str(copy))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [f"loaded from {copy}", "torch::autograd::CppNode<pdfast::DDPMUpdate>"]


# ---------------------------------------------------------------- the build: clear failures


def _build(*args, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "pdfast.kernels.native_build", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=timeout, env=env)


def _assert_one_line_error(proc, text):
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    first = proc.stderr.splitlines()[0]
    assert first.startswith("pdfast native build: error: ") and text in first, proc.stderr


def _path_without(tool):
    return os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep)
                           if p and not (pathlib.Path(p) / tool).exists())


def test_build_without_cmake():
    proc = _build(env={**os.environ, "PATH": _path_without("cmake")})
    _assert_one_line_error(proc, "cmake not found on PATH")
    assert len(proc.stderr.splitlines()) == 1


def test_build_without_compiler():
    proc = _build(env={**os.environ, "CXX": "/nonexistent/bin/g++"})
    if shutil.which("cmake") is None:
        _assert_one_line_error(proc, "cmake not found")
    else:
        _assert_one_line_error(proc, "CXX=/nonexistent/bin/g++ is not an executable C++ compiler")
    assert len(proc.stderr.splitlines()) == 1


@pytest.mark.parametrize("missing", ["cmake", "compiler"])
def test_build_if_possible_skips_without_prerequisite(missing, tmp_path):
    """--if-possible (the test command's form): a missing prerequisite is one stdout line and exit 0, nothing built."""
    env = {**os.environ, "PATH": _path_without("cmake")} if missing == "cmake" else \
        {**os.environ, "CXX": "/nonexistent/bin/g++"}
    proc = _build("--if-possible", "--build-dir", str(tmp_path / "b"), env=env)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("pdfast native build: native backend skipped: "), proc.stdout
    if missing == "cmake" or shutil.which("cmake") is None:
        assert "cmake not found on PATH" in lines[0]
    else:
        assert "CXX=/nonexistent/bin/g++ is not an executable C++ compiler" in lines[0]
    assert not (tmp_path / "b").exists()


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake not installed")
def test_build_if_possible_still_fails_on_build_errors(tmp_path):
    """--if-possible skips only missing prerequisites: a compiler that fails (here on a bad flag) is still exit 1
    with the log path."""
    proc = _build("--if-possible", "--build-dir", str(tmp_path / "b"),
                  env={**os.environ, "CXXFLAGS": "-pdfast-no-such-flag"})
    _assert_one_line_error(proc, "cmake configure failed")
    assert f"full log: {tmp_path / 'b' / 'build.log'}" in proc.stderr.splitlines()[0]


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake not installed")
def test_cmake_without_torch_package(tmp_path):
    """Plain cmake with no torch CMake package: one CMake error naming the problem and the fix."""
    proc = subprocess.run(["cmake", "-S", str(ROOT), "-B", str(tmp_path / "b"),
                           f"-DPDFAST_TORCH_CMAKE_PREFIX={tmp_path / 'no-torch'}"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("CMake Error")]
    assert len(errors) == 1, proc.stderr
    assert "pdfast native: PyTorch CMake package not found" in " ".join(proc.stderr.split())


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake not installed")
@pytest.mark.skipif(torch.version.cuda is not None, reason="checks the CPU-torch refusal of --cuda on")
def test_build_cuda_on_with_cpu_torch(tmp_path):
    """--cuda on with a CPU build of torch stops at configure with CMake's one message, not compiler errors."""
    proc = _build("--cuda", "on", "--build-dir", str(tmp_path / "b"))
    _assert_one_line_error(proc, "cmake configure failed")
    assert "PDFAST_NATIVE_CUDA=ON but the installed torch" in " ".join(proc.stderr.split())
    assert "is a CPU build" in " ".join(proc.stderr.split())
    assert len(proc.stderr.splitlines()) < 10 and (tmp_path / "b" / "build.log").is_file()


def _source_copy(dst: pathlib.Path) -> pathlib.Path:
    """The native build's sources alone (CMakeLists.txt, cmake/, kernels/native/), to build or break in a temp dir
    without touching this checkout's installed library."""
    (dst / "kernels").mkdir(parents=True)
    shutil.copy2(ROOT / "CMakeLists.txt", dst / "CMakeLists.txt")
    shutil.copytree(ROOT / "cmake", dst / "cmake")
    shutil.copytree(ROOT / "kernels" / "native", dst / "kernels" / "native",
                    ignore=shutil.ignore_patterns("__pycache__"))
    return dst


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake not installed")
def test_build_if_possible_still_fails_on_a_compile_error_in_pdfast_sources(tmp_path):
    """--if-possible skips what the machine cannot build, never a broken pdfast source: a syntax error in
    ops_cpu.cpp is exit 1 with the compiler's error line and the log path."""
    src = _source_copy(tmp_path / "src")
    with open(src / "kernels" / "native" / "ops_cpu.cpp", "a") as f:
        f.write("\nthis_is_not_cpp pdfast_broken_on_purpose;\n")
    proc = _build("--if-possible", "--cuda", "off", "--source-dir", str(src), "--build-dir", str(tmp_path / "b"))
    _assert_one_line_error(proc, "cmake build failed")
    assert "ops_cpu.cpp" in proc.stderr and "this_is_not_cpp" in proc.stderr, proc.stderr
    assert not list((src / "kernels").glob("_native/*pdfast_native*"))


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake not installed")
@pytest.mark.skipif(torch.version.cuda is None, reason="needs a CUDA build of torch (this torch is a CPU build)")
def test_build_with_cuda_torch_and_no_cuda_toolkit(tmp_path):
    """A CUDA build of torch on a machine without a CUDA toolkit (here: CUDA_HOME names an empty folder, which is
    the only place looked at then): the CPU library is built and loads, and one line says the CUDA backend was
    skipped and why; exit 0."""
    src = _source_copy(tmp_path / "src")
    empty = tmp_path / "no-cuda"
    empty.mkdir()
    proc = _build("--if-possible", "--source-dir", str(src), "--build-dir", str(tmp_path / "b"),
                  env={**os.environ, "CUDA_HOME": str(empty)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    skipped = [ln for ln in proc.stdout.splitlines() if "CUDA backend skipped" in ln]
    assert len(skipped) == 1 and f"no CUDA toolkit found (CUDA_HOME={empty}" in skipped[0], proc.stdout
    assert "set CUDA_HOME to one" in skipped[0]
    assert proc.stdout.splitlines()[-1].startswith("pdfast native build: loaded from "), proc.stdout
    assert "(devices: cpu)" in proc.stdout.splitlines()[-1]
    info = json.loads((src / "kernels" / "_native" / "build_info.json").read_text())
    assert info["cuda"] is False and info["torch"] == torch.__version__
