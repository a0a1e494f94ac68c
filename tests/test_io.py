"""Atomic outputs (never a half-written folder or file) and PNG grids."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pdfast.errors import PdfastError
from pdfast.io import atomic_dir, atomic_write_bytes, atomic_write_json, image_grid, save_png, to_uint8


def test_atomic_dir_error_leaves_nothing(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(RuntimeError):
        with atomic_dir(out) as tmp:
            (tmp / "half.txt").write_text("x")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_error_keeps_existing_output(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "a.txt").write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(out) as tmp:
            (tmp / "a.txt").write_text("new")
            raise KeyboardInterrupt
    assert (out / "a.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_atomic_dir_success(tmp_path):
    out = tmp_path / "deep" / "run"
    with atomic_dir(out) as tmp:
        assert tmp.parent == out.parent and tmp != out and not out.exists()
        (tmp / "a.txt").write_text("first")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "b.txt").write_text("first")
    assert (out / "a.txt").read_text() == "first" and (out / "sub" / "b.txt").read_text() == "first"
    (out / "keep.txt").write_text("mine")
    with atomic_dir(out) as tmp:
        (tmp / "a.txt").write_text("second")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "c.txt").write_text("second")
    assert (out / "a.txt").read_text() == "second"
    assert sorted(p.name for p in (out / "sub").iterdir()) == ["c.txt"]  # a written sub-folder is replaced whole
    assert (out / "keep.txt").read_text() == "mine"  # files the job did not write are kept (atomic_dir docstring)
    assert [p.name for p in out.parent.iterdir()] == ["run"]  # no temporary or old folder left behind


def test_atomic_dir_refuses_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(PdfastError):
        with atomic_dir(f):
            pass
    assert f.read_text() == "x" and [p.name for p in tmp_path.iterdir()] == ["file"]


def test_atomic_write_bytes_and_json(tmp_path):
    p = tmp_path / "a" / "b.json"
    obj = {"t": torch.tensor([1.0, 2.0]), "n": np.float32(0.5), "i": np.int64(3), "arr": np.arange(3), "p": Path("x/y")}
    atomic_write_json(p, obj)
    assert json.loads(p.read_text()) == {"t": [1.0, 2.0], "n": 0.5, "i": 3, "arr": [0, 1, 2], "p": "x/y"}
    atomic_write_json(p, {"v": 2})
    assert json.loads(p.read_text()) == {"v": 2}
    with pytest.raises(TypeError):
        atomic_write_json(p, {"bad": object()})
    assert json.loads(p.read_text()) == {"v": 2}
    atomic_write_bytes(tmp_path / "a" / "raw.bin", b"\x00\x01")
    assert (tmp_path / "a" / "raw.bin").read_bytes() == b"\x00\x01"
    assert sorted(q.name for q in p.parent.iterdir()) == ["b.json", "raw.bin"]


def test_to_uint8_and_grid():
    x = torch.tensor([-1.0, 0.0, 1.0, 2.0]).view(1, 1, 1, 4).expand(1, 3, 1, 4)
    u = to_uint8(x)
    assert u.shape == (1, 1, 4, 3) and u.dtype == np.uint8
    assert u[0, 0, :, 0].tolist() == [0, 128, 255, 255]
    g = image_grid(torch.zeros(5, 3, 8, 8), nrow=3, pad=1)
    assert g.shape == (2 * 9 + 1, 3 * 9 + 1, 3)
    assert g[0, 0].tolist() == [255, 255, 255] and g[1, 1].tolist() == [128, 128, 128]


def test_save_png(tmp_path):
    from PIL import Image

    imgs = torch.rand(4, 3, 8, 8) * 2 - 1
    p = save_png(tmp_path / "grid.png", imgs)
    assert p == tmp_path / "grid.png"
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(p) as im:
        im.verify()
    with Image.open(p) as im:
        assert im.format == "PNG" and im.mode == "RGB" and im.size == ((2 * 9 + 1) * 4, (2 * 9 + 1) * 4)
        arr = np.asarray(im)
    assert np.array_equal(arr[4:36:4, 4:36:4], to_uint8(imgs[0]))  # first tile, 4x upscaled
    one = save_png(tmp_path / "one.png", torch.zeros(1, 8, 8), scale=1)
    with Image.open(one) as im:
        assert im.mode == "L" and im.size == (10, 10)
