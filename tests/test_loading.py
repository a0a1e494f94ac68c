"""load_model: every accepted source gives the original network's eps; every bad input a one-line PdfastError."""
import json
import os
import shutil
import warnings
from pathlib import Path

import pytest
import torch

from pdfast import loading
from pdfast.errors import PdfastError
from pdfast.loading import load_model
from pdfast.model import DiffusionModel
from pdfast.schedule import Schedule

SCHED = {"clip_sample": False, "num_train_timesteps": 50}


@pytest.fixture
def x():
    return torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))


def _same_eps(model, net, x, t=7):
    with torch.no_grad():
        # same weights; frozen vs trainable nets may take different attention kernels (~1e-7 apart)
        torch.testing.assert_close(model.eps(x, t), net(x, torch.tensor(t)).sample, rtol=0, atol=1e-5)


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


def _err(source, match, **kw) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(PdfastError) as info:
            load_model(source, **kw)
    msg = str(info.value)
    assert "\n" not in msg and match in msg, msg
    return msg


@pytest.fixture
def pipeline(tmp_path, tiny_unet):
    sched = Schedule.from_config(SCHED)
    DiffusionModel(tiny_unet, sched, 8).save(tmp_path / "pipe", backdoor={"trigger": "box", "target": "hat"})
    return tmp_path / "pipe"


@pytest.fixture
def bare(tmp_path, tiny_unet):
    tiny_unet.save_pretrained(tmp_path / "bare")
    return tmp_path / "bare"


def _edit_json(path: Path, **changes):
    cfg = json.loads(path.read_text())
    cfg.update(changes)
    path.write_text(json.dumps(cfg))


# ---------- accepted sources ----------
def test_pipeline_folder(pipeline, tiny_unet, x):
    before = _snapshot(pipeline)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the pipeline has a scheduler config: no default-schedule warning
        model = load_model(str(pipeline))
    _same_eps(model, tiny_unet, x)
    assert all(torch.equal(v, tiny_unet.state_dict()[k]) for k, v in model.net.state_dict().items())
    assert model.schedule.T == 50 and not model.schedule.clip_sample
    assert model.backdoor == {"trigger": "box", "target": "hat"}
    assert model.source == str(pipeline.resolve()) and model.shape == (3, 8, 8)
    assert not model.net.training and not any(p.requires_grad for p in model.net.parameters())
    assert _snapshot(pipeline) == before


def test_bare_folder_without_scheduler_warns(bare, tiny_unet, x):
    before = _snapshot(bare)
    with pytest.warns(UserWarning, match="scheduler config"):
        model = load_model(bare)
    _same_eps(model, tiny_unet, x)
    assert model.schedule.T == 1000 and model.backdoor is None
    assert _snapshot(bare) == before


def test_bare_folder_with_scheduler_and_bin(tmp_path, tiny_unet, x):
    tiny_unet.save_pretrained(tmp_path / "m", safe_serialization=False)
    assert (tmp_path / "m" / "diffusion_pytorch_model.bin").is_file()
    (tmp_path / "m" / "scheduler_config.json").write_text(json.dumps(SCHED))
    before = _snapshot(tmp_path / "m")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = load_model(tmp_path / "m", sample_size=8)
    _same_eps(model, tiny_unet, x)
    assert model.schedule.T == 50
    assert _snapshot(tmp_path / "m") == before


def test_schedule_argument_overrides_folder(bare):
    model = load_model(bare, schedule={"num_train_timesteps": 20})
    assert model.schedule.T == 20


def test_in_memory_sources(tiny_unet, tiny_model, x):
    assert load_model(tiny_model) is tiny_model
    swapped = load_model(tiny_model, schedule=Schedule.from_config(SCHED))
    assert swapped.schedule.T == 50 and swapped.net is tiny_model.net
    model = load_model(tiny_unet, schedule=SCHED)
    _same_eps(model, tiny_unet, x)
    assert not model.net.training and model.sample_size == 8
    with pytest.warns(UserWarning, match="scheduler config"):
        assert load_model(tiny_unet).schedule.T == 1000

    def fn(xt, t):
        return 0.5 * xt

    model = load_model(fn, schedule=SCHED, sample_size=8, channels=3)
    assert torch.equal(model.eps(x, 3), 0.5 * x) and model.shape == (3, 8, 8)


# ---------- errors ----------
def test_in_memory_errors(tiny_unet, tiny_model):
    def fn(xt, t):
        return xt

    _err(fn, "schedule=", sample_size=8)
    _err(fn, "sample_size=", schedule=SCHED)
    _err(42, "cannot load")
    _err(tiny_unet, "mismatched sample size", sample_size=16, schedule=SCHED)
    _err(tiny_model, "mismatched sample size", sample_size=16)
    _err(fn, "must be a pdfast Schedule", schedule=3, sample_size=8)
    _err(tiny_model, "not supported", schedule={"prediction_type": "v_prediction"})
    if not torch.cuda.is_available():
        _err(tiny_model, "CUDA is not available", device="cuda")


def test_path_errors(tmp_path, pipeline, monkeypatch):
    _err(tmp_path / "nope", "missing model folder")
    _err(pipeline / "model_index.json", "is a file")
    (tmp_path / "empty").mkdir()
    _err(tmp_path / "empty", "missing config")
    monkeypatch.setattr(loading.os, "access", lambda *a, **k: False)
    _err(pipeline, "permission denied")


def test_pipeline_errors(tmp_path, pipeline):
    p = tmp_path / "p"
    for case, edit, match in [
        ("no unet", lambda: shutil.rmtree(p / "unet"), "missing unet/config.json"),
        ("no weights", lambda: (p / "unet" / "diffusion_pytorch_model.safetensors").unlink(), "missing weights"),
        ("vae dir", lambda: (p / "vae").mkdir(), "latent diffusion models are not supported yet"),
        ("vae key", lambda: _edit_json(p / "model_index.json", vae=["diffusers", "AutoencoderKL"]),
         "latent diffusion models are not supported yet"),
        ("cond unet", lambda: _edit_json(p / "model_index.json", unet=["diffusers", "UNet2DConditionModel"]),
         "conditional models are not supported yet"),
        ("other unet", lambda: _edit_json(p / "model_index.json", unet=["diffusers", "UNet1DModel"]), "not supported"),
        ("bad index", lambda: (p / "model_index.json").write_text("{oops"), "invalid JSON"),
        ("v-pred", lambda: _edit_json(p / "scheduler" / "scheduler_config.json", prediction_type="v_prediction"),
         "prediction_type 'v_prediction' is not supported"),
    ]:
        shutil.rmtree(p, ignore_errors=True)
        shutil.copytree(pipeline, p)
        edit()
        before = _snapshot(p)
        msg = _err(p, match)
        assert str(p) in msg, (case, msg)
        assert _snapshot(p) == before, case


def test_config_errors(tmp_path, bare):
    p = tmp_path / "b"
    cfg = bare / "config.json"
    for changes, match, kw in [
        ({"_class_name": "UNet2DConditionModel"}, "conditional models are not supported yet", {}),
        ({"num_class_embeds": 10}, "conditional models are not supported yet", {}),
        ({"class_embed_type": "timestep"}, "conditional models are not supported yet", {}),
        ({"_class_name": "VQModel"}, "not supported", {}),
        ({"prediction_type": "sample"}, "not supported", {}),
        ({"out_channels": 6}, "not supported yet", {}),
        ({"sample_size": [8, 16]}, "non-square", {}),
        ({}, "mismatched sample size", {"sample_size": 16}),
        ({"block_out_channels": [8, 8]}, "do not match", {}),
        ({"sample_size": None}, "sample_size=", {}),
    ]:
        shutil.rmtree(p, ignore_errors=True)
        shutil.copytree(bare, p)
        _edit_json(p / "config.json", **changes)
        _err(p, match, **kw)
    assert json.loads(cfg.read_text())["sample_size"] == 8  # the original folder is untouched
    shutil.rmtree(p)
    shutil.copytree(bare, p)
    (p / "config.json").write_text("[1, 2]")
    _err(p, "expected an object")


def test_weight_file_errors(tmp_path, bare, tiny_unet):
    p = tmp_path / "b"
    shutil.copytree(bare, p)
    (p / "diffusion_pytorch_model.safetensors").write_bytes(b"\x00garbage" * 10)
    _err(p, "corrupted")

    (p / "diffusion_pytorch_model.safetensors").unlink()
    torch.save({"conv_in.weight": _Evil()}, p / "diffusion_pytorch_model.bin")
    assert "weights_only=False" not in _err(p, "unsafe")
    assert not _Evil.ran

    (p / "diffusion_pytorch_model.bin").write_bytes(b"\x00garbage" * 10)
    _err(p, "corrupted")

    torch.save([torch.zeros(1)], p / "diffusion_pytorch_model.bin")
    _err(p, "state dict")


class _Evil:
    """An arbitrary pickled object: weights_only=True must refuse to rebuild it."""

    ran = False

    def __reduce__(self):
        return (_mark_ran, ())


def _mark_ran():
    _Evil.ran = True
    return 0


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores file permissions")
def test_unreadable_folder(tmp_path, bare):
    p = tmp_path / "b"
    shutil.copytree(bare, p)
    p.chmod(0)
    try:
        _err(p, "permission denied")
    finally:
        p.chmod(0o755)
