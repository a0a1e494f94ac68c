"""Benchmark setup: one OpenMP thread (2-core machines jump 100x under oversubscription) and the gpu skip marker.

TRITON_INTERPRET is left unset here: the benchmarks time the real paths (Triton on CUDA, torch references on CPU).
"""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)
