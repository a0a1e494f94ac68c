"""Setup of the research tests (`OMP_NUM_THREADS=1 python -m pytest research -q`, outside CI's default run): one
OpenMP thread, research/ importable as the scripts see it (`python research/X.py` puts it first on sys.path), and the
tiny models and micro zoo that the studies' plumbing is tested on.
"""
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


def _tiny_model(timesteps: int = 20):
    """An untrained 8x8 UNet (about 2k parameters) with a ``timesteps``-step schedule, seeded: for plumbing tests."""
    from diffusers import UNet2DModel

    from pdfast.model import DiffusionModel
    from pdfast.schedule import Schedule

    torch.manual_seed(0)
    net = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(4, 8), layers_per_block=1,
                      down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                      norm_num_groups=4)
    return DiffusionModel(net, Schedule.from_config({"num_train_timesteps": timesteps, "clip_sample": False}), 8)


@pytest.fixture
def tiny_model():
    """The factory of _tiny_model(timesteps)."""
    return _tiny_model


def _save_zoo_json(folder, recipe):
    (folder / "zoo.json").write_text(json.dumps({"recipe": recipe, "ground_truth": {}}))


@pytest.fixture(scope="module")
def micro_zoo(tmp_path_factory):
    """models/c8 (clean, dev), models/bd8 (BOX_14 -> HAT ground truth, dev), models/c8t (clean, test). Untrained
    weights: the script's plumbing is under test, not the backdoor."""
    from pdfast.attack import save_backdoored
    from pdfast.patterns import draw_target, draw_trigger

    root = tmp_path_factory.mktemp("qz")
    zoo = root / "models"
    clean = _tiny_model(20)
    clean.save(zoo / "c8")
    _save_zoo_json(zoo / "c8", {"name": "c8", "split": "dev", "kind": "clean"})
    bad = clean.copy()
    with torch.no_grad():
        for p in bad.net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    save_backdoored(bad, zoo / "bd8", {"attack": "baddiffusion", "trigger": "BOX_14", "target": "HAT"},
                    draw_trigger("BOX_14", 8), draw_target("HAT", 8))
    _save_zoo_json(zoo / "bd8", {"name": "bd8", "split": "dev", "kind": "baddiffusion", "trigger": "BOX_14",
                                 "target": "HAT", "poison_rate": 0.1, "steps": 0, "base": "c8"})
    other = clean.copy()
    with torch.no_grad():
        for p in other.net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    other.save(zoo / "c8t")
    _save_zoo_json(zoo / "c8t", {"name": "c8t", "split": "test", "kind": "clean"})
    return root
