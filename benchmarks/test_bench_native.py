"""pytest-benchmark: the fused ops per op, backend and chain-state shape (fused_ops.py has the side-by-side script).

Backends: torch (the references), native (the C++ library; skipped with the loader's reason when not built) and
triton (CUDA only: the CPU interpreter is not worth timing). Shapes: batch 40 x 3x32x32 and batch 16 x 3x16x16.
pyproject's addopts carry --benchmark-disable, so a plain run executes each body once and checks it against the
reference; --benchmark-enable times them:

    OMP_NUM_THREADS=1 python -m pytest benchmarks/test_bench_native.py --benchmark-enable \
        --benchmark-group-by=param:shape,func
"""
import pytest
import torch

import fused_ops as B
import pdfast.kernels as K

SHAPES = [pytest.param(s, id="x".join(map(str, s))) for s in B.SHAPES]
CASES = [pytest.param(c, id=c.split(" (")[0].replace(" ", "-")) for c in B.CASES]


def _params():
    out = []
    for device in ("cpu", "cuda"):
        for backend in ("torch", "native", "triton"):
            marks = [pytest.mark.gpu] if device == "cuda" else []
            out.append(pytest.param((device, backend), id=f"{device}-{backend}", marks=marks))
    return out


@pytest.fixture(params=_params())
def target(request, monkeypatch):
    device, backend = request.param
    monkeypatch.delenv("PDFAST_FORCE_TRITON", raising=False)
    if backend == "native":
        if device not in K.native.devices():
            pytest.skip(f"native library has no {device} kernels: {K.native.status()}")
        monkeypatch.setenv("PDFAST_KERNELS", "native")
    elif backend == "triton":
        if device == "cpu":
            pytest.skip("Triton is timed on CUDA only (the CPU interpreter is a test tool)")
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        monkeypatch.setenv("PDFAST_KERNELS", "triton")
    return device, backend


@pytest.mark.benchmark(group="native-ops")
@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("shape", SHAPES)
def test_op(benchmark, target, shape, name):
    device, backend = target
    inp = B.inputs(shape, device=device)
    fn = B.case(name, B.functions(backend), inp)
    want = B.case(name, B.functions("torch"), inp)()

    def run():
        out = fn()
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    got = benchmark(run)
    for a, b in zip(got, want):
        tol = 1e-5 * max(b.abs().max().item(), 1e-6)
        torch.testing.assert_close(a.float(), b.float(), rtol=1e-5, atol=tol)
