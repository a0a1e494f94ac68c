import itertools

import numpy as np
import pytest
import torch
from PIL import Image

from pdfast.errors import PdfastError
from pdfast.patterns import (TARGETS, TRIGGERS, box_extent, draw_target, draw_trigger, load_pattern, paste_trigger,
                             pattern_names, preview_png)

SIZES = (8, 16, 32, 64)


def _one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert msg and "\n" not in msg
    return msg


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", TRIGGERS)
def test_trigger_shape_range_background(name, size):
    for channels in (3, 1):
        g = draw_trigger(name, size, channels)
        assert g.shape == (channels, size, size) and g.dtype == torch.float32
        assert g.min() >= -1 and g.max() <= 1
        bg = g == -1
        assert bg.float().mean() >= 0.5, "the background must be most of the frame"
        assert (~bg).any(), "the pattern must cover at least one pixel"
        assert (bg == bg[:1]).all(), "the mask must be the same in every channel"
        # the pattern sits in the bottom-right region
        ys, xs = torch.nonzero(~bg[0], as_tuple=True)
        assert ys.float().mean() >= size / 2 and xs.float().mean() >= size / 2


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", TARGETS)
def test_target_shape_range_background(name, size):
    for channels in (3, 1):
        y = draw_target(name, size, channels)
        assert y.shape == (channels, size, size) and y.dtype == torch.float32
        assert y.min() >= -1 and y.max() <= 1
        assert (y[:, 0, 0] == torch.tensor(-0.4)).all()
        if name != "CORNER":
            for r, c in ((0, -1), (-1, 0)):
                assert (y[:, r, c] == torch.tensor(-0.4)).all()
            fg = (y != torch.tensor(-0.4)).any(0)
            ys, xs = torch.nonzero(fg, as_tuple=True)
            span = min(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1).item()
            assert span >= 0.6 * size and fg.float().mean() >= 0.3, "targets fill most of the frame"


@pytest.mark.parametrize("size", SIZES)
def test_patterns_pairwise_different(size):
    pats = {n: draw_trigger(n, size) for n in TRIGGERS}
    for a, b in itertools.combinations(TRIGGERS, 2):
        assert not torch.equal(pats[a], pats[b]), (a, b)
    assert (pats["WARNING1"] - pats["WARNING2"]).abs().mean() > 0.05
    tgts = {n: draw_target(n, size) for n in TARGETS}
    for a, b in itertools.combinations(TARGETS, 2):
        assert not torch.equal(tgts[a], tgts[b]), (a, b)


def test_box_geometry():
    g = draw_trigger("BOX_14", 32)
    inside = torch.zeros(32, 32, dtype=torch.bool)
    inside[16:30, 16:30] = True
    assert (g[:, inside] == 0).all() and (g[:, ~inside] == -1).all()
    g = draw_trigger("box_18", 32)
    inside = torch.zeros(32, 32, dtype=torch.bool)
    inside[12:30, 12:30] = True
    assert (g[:, inside] == 0).all() and (g[:, ~inside] == -1).all()
    assert box_extent(14, 64) == (32, 60) and box_extent(14, 16) == (8, 15)
    # the stop signs occupy the same box
    for side in (14, 18):
        lo, hi = box_extent(side, 32)
        m = draw_trigger(f"STOP_SIGN_{side}", 32)[0] != -1
        ys, xs = torch.nonzero(m, as_tuple=True)
        assert ys.min() >= lo and xs.min() >= lo and ys.max() < hi and xs.max() < hi
        assert m[lo:hi, lo:hi].float().mean() > 0.8


def test_paste_trigger_formula():
    torch.manual_seed(0)
    x = torch.rand(5, 3, 16, 16) * 2 - 1
    g = draw_trigger("HEART", 16)
    m = (g == -1).float()
    assert torch.equal(paste_trigger(x, g), m * x + (1 - m) * g)
    assert torch.equal(paste_trigger(x[0], g), (m * x + (1 - m) * g)[0])
    with pytest.raises(PdfastError) as e:
        paste_trigger(x, draw_trigger("HEART", 8))
    _one_line(e)


def test_load_builtin_names():
    assert torch.equal(load_pattern("stop_sign_14", 16), draw_trigger("STOP_SIGN_14", 16))
    assert torch.equal(load_pattern("Hat", 16, kind="target"), draw_target("HAT", 16))
    assert pattern_names("target") == TARGETS
    with pytest.raises(PdfastError) as e:
        load_pattern("PENGUIN", 32)
    assert "BOX_14" in _one_line(e) and "GLASSES" in str(e.value)
    with pytest.raises(PdfastError) as e:
        load_pattern("HAT", 32, kind="trigger")
    _one_line(e)


def test_load_png_round_trip(tmp_path):
    g = draw_trigger("HOUSE", 16)
    arr = ((g + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    Image.fromarray(arr).save(tmp_path / "t.png")
    back = load_pattern(tmp_path / "t.png", 16)
    assert back.shape == (3, 16, 16) and back.dtype == torch.float32
    assert (back - g).abs().max() <= 0.5 / 127.5 + 1e-6
    assert torch.equal(back == -1, g == -1)
    grey = load_pattern(str(tmp_path / "t.png"), 8, channels=1)  # converted to L and resized
    assert grey.shape == (1, 8, 8) and grey.min() >= -1 and grey.max() <= 1


def test_preview_png(tmp_path):
    p = preview_png("CAT", tmp_path / "cat.png", scale=2, size=16)
    with Image.open(p) as im:
        assert im.mode == "RGB" and im.size == (2 * 18, 2 * 18)  # save_png adds a 1 px frame
    p = preview_png(torch.stack([draw_trigger(n, 8) for n in TRIGGERS]), tmp_path / "all.png", scale=1)
    assert p.exists()


def test_load_tensor_files(tmp_path):
    from safetensors.torch import save_file

    g = draw_trigger("TREE", 16)
    np.save(tmp_path / "t.npy", g.numpy())
    assert torch.equal(load_pattern(tmp_path / "t.npy", 16), g)
    np.save(tmp_path / "t4.npy", g[None].numpy().astype(np.float64))
    assert torch.equal(load_pattern(tmp_path / "t4.npy", 16), g)
    save_file({"trigger": g.contiguous(), "aaa": torch.zeros(2)}, str(tmp_path / "t.safetensors"))
    assert torch.equal(load_pattern(tmp_path / "t.safetensors", 16), g)
    y = draw_target("SHOE", 16)
    save_file({"whatever": y.contiguous()}, str(tmp_path / "y.safetensors"))
    assert torch.equal(load_pattern(tmp_path / "y.safetensors", 16, kind="target"), y)
    assert torch.equal(load_pattern(g, 16), g)


def test_load_errors(tmp_path):
    g = draw_trigger("TREE", 16)
    np.save(tmp_path / "shape.npy", g.numpy())
    with pytest.raises(PdfastError) as e:
        load_pattern(tmp_path / "shape.npy", 32)
    assert "has shape (3, 16, 16), expected (3, 32, 32)" in _one_line(e)
    with pytest.raises(PdfastError) as e:
        load_pattern(tmp_path / "shape.npy", 16, channels=1)
    _one_line(e)
    bad = g.clone()
    bad[0, 0, 0] = float("nan")
    np.save(tmp_path / "nan.npy", bad.numpy())
    with pytest.raises(PdfastError) as e:
        load_pattern(tmp_path / "nan.npy", 16)
    assert "NaN" in _one_line(e)
    np.save(tmp_path / "range.npy", (g * 255).numpy())
    with pytest.raises(PdfastError) as e:
        load_pattern(tmp_path / "range.npy", 16)
    assert "outside [-1, 1]" in _one_line(e)
    np.save(tmp_path / "edge.npy", (g * 1.00005).numpy())  # within tolerance: accepted, clamped
    assert load_pattern(tmp_path / "edge.npy", 16).abs().max() <= 1
    for missing in (tmp_path / "nope.png", str(tmp_path / "nope.safetensors"), "dir/nope.npy"):
        with pytest.raises(PdfastError) as e:
            load_pattern(missing, 16)
        assert "not found" in _one_line(e)
    (tmp_path / "junk.png").write_bytes(b"not a png")
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors")
    (tmp_path / "junk.npy").write_bytes(b"not npy")
    for junk in ("junk.png", "junk.safetensors", "junk.npy"):
        with pytest.raises(PdfastError) as e:
            load_pattern(tmp_path / junk, 16)
        _one_line(e)
    with pytest.raises(PdfastError) as e:
        draw_trigger("BOX_14", 32, channels=2)
    _one_line(e)


def test_patch_starts_are_bright_squares_on_a_dark_frame_at_the_corners_and_the_centre():
    from pdfast.patterns import patch_starts

    grid = patch_starts(3, 16)
    assert list(grid) == ["tl", "tr", "bl", "br", "c"]
    where = {}
    for name, x in grid.items():
        assert x.shape == (3, 16, 16) and set(x.unique().tolist()) == {-1.0, 1.0}
        on = (x[0] == 1).nonzero()
        rows, cols = on[:, 0], on[:, 1]
        assert len(on) == 36 and (x[:, rows, cols] == 1).all()          # one 6x6 square (3/8 of 16), every channel
        where[name] = (int(rows.min()), int(cols.min()))
    assert where == {"tl": (1, 1), "tr": (1, 9), "bl": (9, 1), "br": (9, 9), "c": (5, 5)}
    assert (patch_starts(1, 32)["br"][0] == 1).nonzero().min(0).values.tolist() == [18, 18]  # side 12, inset 2
