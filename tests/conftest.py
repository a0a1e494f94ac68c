"""Test setup. TRITON_INTERPRET must be set before any @triton.jit decorator runs, so it is set here,
before pdfast (which never imports kernels eagerly) is imported by any test."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)


@pytest.fixture
def tiny_unet():
    """A tiny diffusers UNet2DModel built in code (8x8, 3 channels), random weights, seeded."""
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    return UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(4, 8), layers_per_block=1,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4)


@pytest.fixture
def tiny_model(tiny_unet):
    from pdfast.model import DiffusionModel
    from pdfast.schedule import Schedule

    return DiffusionModel(tiny_unet, Schedule.from_config({"clip_sample": False}), sample_size=8).frozen()
