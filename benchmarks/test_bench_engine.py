"""pytest-benchmark suite: one inversion iteration (K steps down the chain, loss on the last, backward to delta), and
one sampling step (a no-grad network call and the DDPM update).

CPU cases, small enough that CI runs them with --benchmark-disable (each body once, as a smoke test):
  tiny     8x8 tiny UNet, batch 8, K = 4 (the engine keeping all steps and recomputing all);
  demo     the embedded demo model's architecture (16x16, 637k parameters), batch 40 (the inversion batch), K = 4;
  cifar10  google/ddpm-cifar10-32's architecture (32x32, 35.7M parameters) at batch 2, K = 1: the real network's
           per-call cost on a CPU in seconds (the GPU cases run it at batch 40, K = 10).
GPU cases (cifar10, batch 40, K = 10) are skipped without CUDA. `python benchmarks/regress.py` times the CPU cases against
the committed baseline (benchmarks/README.md). Engines are built (and on GPU warmed up: compiled, graphs captured) outside
the timed function; random weights cost what trained ones do.
"""
import functools

import pytest
import torch

import common
from pdfast.engine.fast import FastEngine
from pdfast.engine.reference import ReferenceEngine

CPU_CASES = {
    "tiny": dict(arch="tiny", size=8, batch=8, k=4),
    "demo": dict(arch="demo", size=16, batch=40, k=4),
    "cifar10": dict(arch="cifar10", size=32, batch=2, k=1),
}
GPU_CASE = dict(arch="cifar10", size=32, batch=40, k=10)
# fast-engine variants per CPU case: memory budget None (the engine's own: every step keeps its graph at these sizes)
# and 0 (every step recomputed in the backward pass, the large-K path); cifar10 only the first, to keep CI short
# "graphed-path": the demo recomputing every step through the code path CUDA captures (the recompute and its
# vector-Jacobian product from one coefficient row, the fused row ops; cuda_graphs="emulate" runs it without capture)
FAST_CPU = [("tiny", None, False), ("tiny", 0, False), ("demo", None, False), ("demo", 0, False),
            ("demo", 0, "emulate"), ("cifar10", None, False)]
# the fast engine's loss must equal the reference's (1e-5) where the reference runs in a second or less
CHECKED = {"tiny", "demo"}


def iteration(engine, inp, device, warmup=True):
    def run():
        loss, grad = engine.loss_and_grad(**inp)
        common.sync(device)
        return loss, grad
    if warmup:
        run()  # compile, graph capture, activation estimate
    return run


@functools.lru_cache(maxsize=None)
def cached_model(arch, size, device):
    """One model per architecture and session (engines never modify it: the fast engine works on a frozen copy)."""
    return common.build_model(arch, size, device)


def setup(case, device):
    model = cached_model(case["arch"], case["size"], device)
    return model, common.chain_inputs(model, case["batch"], case["k"])


def kernel_info(engine) -> dict:
    """Which backend each fused op ran on (native or torch on CPU): a timing means little without it."""
    kernels = engine.describe().get("kernels")
    return {f"kernels.{k}": v for k, v in kernels.items()} if isinstance(kernels, dict) else {"kernels": str(kernels)}


@pytest.mark.benchmark(group="engine-cpu")
@pytest.mark.parametrize("case", list(CPU_CASES))
def test_reference_iteration_cpu(benchmark, case):
    model, inp = setup(CPU_CASES[case], "cpu")
    # CPU: no compile or graphs to warm up; the calibration round of pytest-benchmark is not timed either
    loss, grad = benchmark(iteration(ReferenceEngine(model), inp, "cpu", warmup=False))
    assert loss > 0 and torch.isfinite(grad).all()


@pytest.mark.benchmark(group="engine-cpu")
@pytest.mark.parametrize("case,budget,graphs", FAST_CPU,
                         ids=[f"{c}-{'keep-all' if b is None else 'recompute-all'}{'-graphed-path' if g else ''}"
                              for c, b, g in FAST_CPU])
def test_fast_iteration_cpu(benchmark, case, budget, graphs):
    model, inp = setup(CPU_CASES[case], "cpu")
    engine = FastEngine(model, memory_budget=budget, cuda_graphs=graphs)
    loss, grad = benchmark(iteration(engine, inp, "cpu", warmup=False))
    assert loss > 0 and torch.isfinite(grad).all()
    benchmark.extra_info.update(kernel_info(engine))
    if case in CHECKED:
        want, _ = ReferenceEngine(model).loss_and_grad(**inp)
        assert abs(loss - want) <= 1e-5 * want


@pytest.mark.benchmark(group="sampling-step-cpu")
@pytest.mark.parametrize("case,batch", [("demo", 32), ("cifar10", 2)])
def test_sampling_step_cpu(benchmark, case, batch):
    """One step of the verdict's sampling: the engine's no-grad network call and the DDPM update (the demo at batch
    32: the verdict's 16 images from eps + trigger and 16 from eps + pattern, run as one chain)."""
    from pdfast.chain import DDPMSampler

    c = CPU_CASES[case]
    model = cached_model(c["arch"], c["size"], "cpu")
    engine = FastEngine(model)  # what pdfast.invert samples with by default
    sampler = DDPMSampler(model.schedule, 1)
    g = torch.Generator().manual_seed(0)
    x, z = torch.randn(batch, *model.shape, generator=g), torch.randn(batch, *model.shape, generator=g)
    t = torch.tensor(sampler.timesteps[0])

    def step():
        with torch.no_grad():
            return sampler.step(0, x, engine.eps_nograd(x, t), z)

    out = benchmark(step)
    assert out.shape == x.shape and torch.isfinite(out).all()
    benchmark.extra_info.update(kernel_info(engine))


@pytest.mark.gpu
@pytest.mark.benchmark(group="engine-gpu")
def test_reference_iteration_gpu(benchmark):
    model, inp = setup(GPU_CASE, "cuda")
    loss, grad = benchmark(iteration(ReferenceEngine(model), inp, "cuda"))
    assert torch.isfinite(grad).all()


@pytest.mark.gpu
@pytest.mark.benchmark(group="engine-gpu")
def test_fast_iteration_gpu(benchmark):
    model, inp = setup(GPU_CASE, "cuda")
    engine = FastEngine(model)  # bf16, compiled, CUDA graphs, Triton kernels
    loss, grad = benchmark(iteration(engine, inp, "cuda"))
    assert torch.isfinite(grad).all()
    benchmark.extra_info.update({k: v for k, v in engine.describe().items() if isinstance(v, (int, float, str))})
