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


# ---------- --out checked before any work, ordinary permissions, rescue, labelled trigger.png ----------

import errno  # noqa: E402
import os  # noqa: E402
import stat  # noqa: E402

from pdfast.io import ensure_output_dir, ensure_output_file, save_labelled_png, write_or_rescue  # noqa: E402


@pytest.fixture
def umask():
    """Set the process umask for one test (restored after)."""
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


def mode(p):
    return stat.S_IMODE(os.stat(p).st_mode)


def one_line(err) -> str:
    msg = str(err.value)
    assert "\n" not in msg and msg
    return msg


def test_ensure_output_dir_accepts_writable_paths_and_leaves_no_trace(tmp_path):
    out = tmp_path / "a" / "b" / "run"
    assert ensure_output_dir(out) == out and ensure_output_dir(out, sibling=False) == out
    assert list(tmp_path.iterdir()) == []  # the folders made for the check are gone again
    out.mkdir(parents=True)
    (out / "keep.txt").write_text("mine")
    ensure_output_dir(out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and [p.name for p in out.parent.iterdir()] == ["run"]
    assert ensure_output_dir(None) is None  # an optional --out not given
    assert ensure_output_file(tmp_path / "new" / "x.png") == tmp_path / "new" / "x.png"
    assert not (tmp_path / "new").exists()


def test_ensure_output_dir_refuses_unwritable_paths(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(PdfastError) as e:
        ensure_output_dir(f)
    assert one_line(e) == f"--out {f} is a file; give a folder path"
    with pytest.raises(PdfastError) as e:
        ensure_output_dir(f / "sub" / "run")  # a parent is a file
    assert one_line(e) == (f"--out {f / 'sub' / 'run'} cannot be written (Not a directory: {f / 'sub'}); choose a "
                           "folder you can create and write to")
    with pytest.raises(PdfastError) as e:
        ensure_output_file(tmp_path)
    assert one_line(e) == f"--out {tmp_path} is a folder; give a file path"
    with pytest.raises(PdfastError, match="cannot be written"):
        ensure_output_file(f / "x.png")
    assert f.read_text() == "x" and [p.name for p in tmp_path.iterdir()] == ["file"]


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc")
def test_ensure_output_dir_refuses_impossible_locations():
    for bad in ("/proc/forbidden/x", "/proc/pdfast-x", "/sys/pdfast-x"):
        with pytest.raises(PdfastError) as e:
            ensure_output_dir(bad)
        msg = one_line(e)
        assert msg.startswith(f"--out {bad} cannot be written (") and msg.endswith("choose a folder you can create "
                                                                                    "and write to"), msg
    with pytest.raises(PdfastError, match="/proc/forbidden/x.png cannot be written"):
        ensure_output_file("/proc/forbidden/x.png")
    assert not os.path.exists("/proc/forbidden")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes into read-only folders")
def test_ensure_output_dir_refuses_a_read_only_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(PdfastError, match="Permission denied"):
            ensure_output_dir(ro / "run")
        with pytest.raises(PdfastError, match="Permission denied"):
            ensure_output_dir(ro)  # exists, but nothing can be written into it
    finally:
        ro.chmod(0o755)


def test_outputs_have_ordinary_permissions(tmp_path, umask):
    for mask, fmode, dmode in ((0o022, 0o644, 0o755), (0o002, 0o664, 0o775), (0o077, 0o600, 0o700)):
        umask(mask)
        out = tmp_path / f"run{mask:o}"
        with atomic_dir(out) as tmp:
            atomic_write_bytes(tmp / "a.bin", b"x")
            atomic_write_json(tmp / "r.json", {"v": 1})
            save_png(tmp / "p.png", torch.zeros(1, 3, 4, 4))
        assert mode(out) == dmode, oct(mode(out))
        assert {p.name: mode(p) for p in out.iterdir()} == {"a.bin": fmode, "r.json": fmode, "p.png": fmode}
        atomic_write_bytes(out / "a.bin", b"y")  # replacing a file too
        assert mode(out / "a.bin") == fmode


def _writer(names=("trigger.safetensors", "report.json"), full=None):
    """A writer like report.save_result's; raises 'no space left' for folders under ``full``."""
    def write(folder):
        for n in names:
            if full is not None and full in folder.parents:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder / n))
            atomic_write_bytes(folder / n, n.encode())
    return write


def test_write_or_rescue_writes_out_when_it_can(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert write_or_rescue(tmp_path / "o", _writer()) == tmp_path / "o"
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["report.json", "trigger.safetensors"]
    assert [p.name for p in tmp_path.iterdir()] == ["o"]  # no rescue folder


def test_write_or_rescue_keeps_the_result_when_out_vanished(tmp_path, monkeypatch, umask):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    gone = tmp_path / "gone"
    gone.write_text("the folder was removed and a file put in its place")
    with pytest.raises(PdfastError) as e:
        write_or_rescue(gone / "out", _writer())
    msg = one_line(e)
    [kept] = list(cwd.iterdir())
    assert kept.name.startswith("pdfast-rescued-out-") and mode(kept) == 0o755
    assert msg == (f"could not write the outputs to {gone / 'out'} (File exists: {gone}); the result was kept in "
                   f"{kept} instead")
    assert (kept / "trigger.safetensors").read_bytes() == b"trigger.safetensors" and mode(kept / "report.json") == 0o644


def test_write_or_rescue_disk_full_falls_back_to_the_temp_folder(tmp_path, monkeypatch):
    import tempfile

    disk, other = tmp_path / "disk", tmp_path / "tmp"
    (disk / "cwd").mkdir(parents=True)
    other.mkdir()
    monkeypatch.chdir(disk / "cwd")  # the current folder is on the full disk too
    monkeypatch.setattr(tempfile, "tempdir", str(other))
    with pytest.raises(PdfastError) as e:
        write_or_rescue(disk / "out", _writer(full=disk))
    msg = one_line(e)
    [kept] = list(other.iterdir())
    assert "No space left on device" in msg and msg.endswith(f"the result was kept in {kept} instead")
    assert sorted(p.name for p in kept.iterdir()) == ["report.json", "trigger.safetensors"]
    assert list((disk / "cwd").iterdir()) == [] and sorted(p.name for p in disk.iterdir()) == ["cwd"]  # no debris


def test_write_or_rescue_says_so_when_nothing_can_be_written(tmp_path, monkeypatch):
    import tempfile

    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.raises(PdfastError) as e:
        write_or_rescue(tmp_path / "out", _writer(full=tmp_path))
    msg = one_line(e)
    assert msg.startswith(f"could not write the outputs to {tmp_path / 'out'} (No space left on device")
    assert f"nor to a rescue folder in {tmp_path / 'cwd'} or {tmp_path}" in msg
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cwd"] and list((tmp_path / "cwd").iterdir()) == []


def _check_labelled(path, imgs, n_labels):
    from PIL import Image

    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"))
    h, w = imgs.shape[-2:]
    assert arr.shape[1] >= 400
    scale, rest = divmod(arr.shape[1], n_labels * (w + 1) + 1)
    assert rest == 0 and scale * w >= 100, arr.shape  # panels upscaled by a whole factor
    strip = arr.shape[0] - (h + 2) * scale
    assert strip >= 16
    for i in range(n_labels):  # dark text over every panel, white elsewhere in the strip
        x0 = (1 + i * (w + 1)) * scale
        label = arr[:strip, x0:x0 + w * scale]
        assert (label.min(-1) < 100).sum() > 30, i
        panel = arr[strip + scale:strip + scale + h * scale:scale, x0:x0 + w * scale:scale]
        expect = to_uint8(imgs[i])
        assert np.array_equal(panel, expect if expect.shape[-1] == 3 else expect.repeat(3, -1)), i
    assert (arr[:strip, :scale] == 255).all()  # the strip's margin stays white


def test_save_labelled_png(tmp_path):
    imgs = torch.rand(3, 3, 16, 16) * 2 - 1
    p = save_labelled_png(tmp_path / "t.png", imgs, ["inverted", "pattern", "ground truth"])
    _check_labelled(p, imgs, 3)
    plain = save_png(tmp_path / "plain.png", imgs, nrow=3)
    from PIL import Image

    with Image.open(p) as a, Image.open(plain) as b:
        assert a.width >= 2 * b.width and a.height > b.height  # 208x72 before
    gray = torch.rand(2, 1, 8, 8) * 2 - 1
    q = save_labelled_png(tmp_path / "g.png", gray, ["inverted", "pattern"])
    with Image.open(q) as im:
        assert im.mode == "L"
    _check_labelled(q, gray, 2)


def test_save_labelled_png_without_a_scalable_font(tmp_path, monkeypatch):
    """Pillow < 10.1 (load_default has no size) or no FreeType: the bitmap font, scaled up, still labels."""
    from PIL import ImageFont

    bitmap = getattr(ImageFont, "load_default_imagefont", ImageFont.load_default)

    def old_load_default(size=None):
        if size is not None:
            raise TypeError("load_default() got an unexpected keyword argument 'size'")
        return bitmap()

    monkeypatch.setattr(ImageFont, "load_default", old_load_default)
    imgs = torch.rand(3, 3, 16, 16) * 2 - 1
    _check_labelled(save_labelled_png(tmp_path / "t.png", imgs, ["inverted", "pattern", "ground truth"]), imgs, 3)
