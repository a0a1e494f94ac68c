"""pytest-benchmark suite: one inversion iteration (K steps down the chain, loss on the last, backward to delta).

CPU cases (tiny UNet, K=4) run in CI with --benchmark-disable (each body runs once, as a smoke test); GPU cases
(google/ddpm-cifar10-32 architecture, batch 40, K=10) are skipped without CUDA. Compare runs with
--benchmark-autosave / --benchmark-compare (bench/README.md). The engine is built and warmed up (compiled, graphs
captured) outside the timed function.
"""
import pytest
import torch

import common
from pdfast.engine.fast import FastEngine
from pdfast.engine.reference import ReferenceEngine

CPU_CASE = dict(arch="tiny", size=8, batch=8, k=4)
GPU_CASE = dict(arch="cifar10", size=32, batch=40, k=10)


def iteration(engine, inp, device):
    def run():
        loss, grad = engine.loss_and_grad(**inp)
        common.sync(device)
        return loss, grad
    run()  # warm-up: compile, graph capture, activation estimate
    return run


def setup(case, device):
    model = common.build_model(case["arch"], case["size"], device)
    return model, common.chain_inputs(model, case["batch"], case["k"])


@pytest.mark.benchmark(group="engine-cpu")
def test_reference_iteration_cpu(benchmark):
    model, inp = setup(CPU_CASE, "cpu")
    loss, grad = benchmark(iteration(ReferenceEngine(model), inp, "cpu"))
    assert loss > 0 and torch.isfinite(grad).all()


@pytest.mark.benchmark(group="engine-cpu")
@pytest.mark.parametrize("budget", [None, 0], ids=["keep-all", "recompute-all"])
def test_fast_iteration_cpu(benchmark, budget):
    model, inp = setup(CPU_CASE, "cpu")
    engine = FastEngine(model, memory_budget=budget)
    loss, grad = benchmark(iteration(engine, inp, "cpu"))
    want, _ = ReferenceEngine(model).loss_and_grad(**inp)
    assert abs(loss - want) <= 1e-5 * want and torch.isfinite(grad).all()


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
