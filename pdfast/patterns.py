"""Triggers and targets in the BadDiffusion convention (docs/method.md section 2), drawn in code at any resolution.

Triggers have background exactly -1, so ``M = (g == -1)`` marks the pixels where the clean image shows through;
targets have background -0.4 (grey). Every picture is designed on a 32x32 frame, drawn with PIL at 8x supersampling
and area-averaged down, so the geometry scales with ``size``. Trigger pixels covered less than half become exactly
-1 and the rest keep the pattern colour, so the mask stays crisp; no trigger colour has a channel at -1, so the mask
is the same in every channel.
"""
from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from pdfast.errors import PdfastError

TRIGGERS = ("BOX_14", "BOX_18", "STOP_SIGN_14", "STOP_SIGN_18", "HEART", "TREE", "HOUSE", "WARNING1", "WARNING2",
            "GLASSES")
TARGETS = ("HAT", "CAT", "CORNER", "SHOE")

TRIGGER_BACKGROUND = -1.0
TARGET_BACKGROUND = -0.4

_SS = 8  # supersampling factor
_FRAME = 32.0  # design frame
_RANGE_TOL = 1.0001
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")

# Palette (uint8 RGB). Trigger colours keep every channel >= 8 so no trigger pixel reads as background (-1).
(_RED, _WHITE, _INK, _HEART, _LEAF, _BARK, _WALL, _ROOF, _DOOR, _YELLOW, _ORANGE, _SILVER) = (
    (220, 30, 40), (245, 245, 245), (24, 24, 28), (235, 40, 90), (30, 160, 60), (130, 75, 30), (70, 130, 225),
    (200, 70, 30), (90, 50, 20), (255, 205, 10), (255, 130, 10), (215, 220, 230))


def _round(v: float) -> int:
    return int(math.floor(v + 0.5))


def box_extent(side32: int, size: int) -> tuple[int, int]:
    """Rows/cols [start, end) of BOX_<side32> at ``size``: 16..29 (BOX_14) or 12..29 (BOX_18) at 32, scaled."""
    margin = max(1, _round(2 * size / _FRAME))
    side = max(1, _round(side32 * size / _FRAME))
    end = size - margin
    return max(0, end - side), end


class _Canvas:
    """An RGBA canvas at ``size * 8`` px addressed in 32-frame design units; alpha is the coverage."""

    def __init__(self, size: int):
        from PIL import Image, ImageDraw

        self.size = size
        self.k = size * _SS / _FRAME  # canvas px per design unit
        self.img = Image.new("RGBA", (size * _SS, size * _SS), (0, 0, 0, 0))
        self.draw = ImageDraw.Draw(self.img)

    def _pts(self, pts):
        return [(x * self.k, y * self.k) for x, y in pts]

    def _box(self, x0, y0, x1, y1):
        k = self.k
        return [x0 * k, y0 * k, max(x0 * k, x1 * k - 1), max(y0 * k, y1 * k - 1)]

    def _w(self, w):
        # at least 1.25 output px so a stroke survives the coverage threshold at tiny sizes
        return max(int(1.25 * _SS), _round(w * self.k))

    def poly(self, pts, c):
        self.draw.polygon(self._pts(pts), fill=(*c, 255))

    def rect(self, x0, y0, x1, y1, c):
        self.draw.rectangle(self._box(x0, y0, x1, y1), fill=(*c, 255))

    def ellipse(self, cx, cy, rx, ry, c):
        self.draw.ellipse(self._box(cx - rx, cy - ry, cx + rx, cy + ry), fill=(*c, 255))

    def ring(self, cx, cy, rx, ry, w, c):
        self.ellipse(cx, cy, rx, ry, c)
        d = self._w(w) / self.k
        if min(rx, ry) > d:  # the hole is background again (alpha 0)
            self.draw.ellipse(self._box(cx - rx + d, cy - ry + d, cx + rx - d, cy + ry - d), fill=(0, 0, 0, 0))

    def line(self, pts, w, c):
        self.draw.line(self._pts(pts), fill=(*c, 255), width=self._w(w))

    def downsample(self) -> tuple[np.ndarray, np.ndarray]:
        """Area filter 8x8 -> (premultiplied colour in [-1, 1] (H, W, 3), coverage in [0, 1] (H, W))."""
        a = np.asarray(self.img, dtype=np.float64) / 255.0
        n = self.size
        cov = a[..., 3]
        col = (a[..., :3] * 2.0 - 1.0) * cov[..., None]
        cov = cov.reshape(n, _SS, n, _SS).mean(axis=(1, 3))
        col = col.reshape(n, _SS, n, _SS, 3).mean(axis=(1, 3))
        return col, cov


# ---------------------------------------------------------------------------------------------------- triggers
def _octagon(c: _Canvas, x0, y0, x1, y1, col):
    s = x1 - x0
    t = s / (2 + math.sqrt(2))
    c.poly([(x0 + t, y0), (x1 - t, y0), (x1, y0 + t), (x1, y1 - t), (x1 - t, y1), (x0 + t, y1), (x0, y1 - t),
            (x0, y0 + t)], col)


def _stop_sign(side32: int):
    def draw(c: _Canvas):
        lo, hi = box_extent(side32, c.size)
        u = _FRAME / c.size  # one output pixel in design units
        x0, x1 = lo * u, hi * u
        s = x1 - x0
        b = s * 0.08
        _octagon(c, x0, x0, x1, x1, _WHITE)
        _octagon(c, x0 + b, x0 + b, x1 - b, x1 - b, _RED)
        m = (x0 + x1) / 2
        c.rect(x0 + 0.2 * s, m - 0.1 * s, x1 - 0.2 * s, m + 0.1 * s, _WHITE)
    return draw


def _heart(c: _Canvas):
    c.ellipse(18.2, 18.2, 4.3, 4.3, _HEART)
    c.ellipse(25.8, 18.2, 4.3, 4.3, _HEART)
    c.poly([(14.1, 19.6), (29.9, 19.6), (22, 29.5)], _HEART)
    c.rect(18, 16, 26, 21, _HEART)


def _tree(c: _Canvas):
    c.rect(20.3, 25, 23.7, 30, _BARK)
    c.poly([(22, 17), (14, 26.5), (30, 26.5)], _LEAF)
    c.poly([(22, 12.5), (15.5, 21.5), (28.5, 21.5)], _LEAF)


def _house(c: _Canvas):
    c.rect(15.5, 21, 28.5, 30, _WALL)
    c.poly([(13.5, 21.5), (30.5, 21.5), (22, 13)], _ROOF)
    c.rect(20.2, 24.5, 23.8, 30, _DOOR)
    c.rect(16.8, 23.2, 19.2, 25.6, _WHITE)
    c.rect(24.8, 23.2, 27.2, 25.6, _WHITE)


def _exclamation(c: _Canvas, cx, top, bottom, w, col):
    h = bottom - top
    c.poly([(cx - w / 2, top), (cx + w / 2, top), (cx + w * 0.35, top + 0.68 * h), (cx - w * 0.35, top + 0.68 * h)],
           col)
    c.rect(cx - w * 0.4, top + 0.8 * h, cx + w * 0.4, bottom, col)


def _warning1(c: _Canvas):
    """Yellow triangle with a dark '!'."""
    c.poly([(22, 12.5), (30.5, 29.5), (13.5, 29.5)], _YELLOW)
    _exclamation(c, 22, 18.5, 27.5, 2.2, _INK)


def _warning2(c: _Canvas):
    """Orange diamond with a dark '!'."""
    c.poly([(22, 12.5), (30.5, 21), (22, 29.5), (13.5, 21)], _ORANGE)
    _exclamation(c, 22, 16.5, 25.5, 2.2, _INK)


def _glasses(c: _Canvas):
    c.ring(17.5, 22, 4.3, 3.8, 1.5, _SILVER)
    c.ring(26.5, 22, 4.3, 3.8, 1.5, _SILVER)
    c.line([(21.2, 20.6), (22.8, 20.6)], 1.2, _SILVER)


# ----------------------------------------------------------------------------------------------------- targets
def _hat(c: _Canvas):
    dark, band = (28, 28, 34), (170, 25, 35)
    c.rect(9, 3, 23, 23, dark)
    c.ellipse(16, 3.3, 7, 1.3, (55, 55, 65))
    c.rect(9, 16.5, 23, 20.5, band)
    c.ellipse(16, 23.5, 13.5, 3.5, dark)


def _cat(c: _Canvas):
    fur, pink, eye, ink = (235, 145, 45), (245, 160, 175), (120, 220, 90), (20, 20, 20)
    c.poly([(4.5, 15), (6.5, 2.5), (14.5, 9.5)], fur)
    c.poly([(27.5, 15), (25.5, 2.5), (17.5, 9.5)], fur)
    c.poly([(6.8, 11.5), (7.6, 5.5), (11.6, 9.2)], pink)
    c.poly([(25.2, 11.5), (24.4, 5.5), (20.4, 9.2)], pink)
    c.ellipse(16, 18, 12, 10.5, fur)
    c.ellipse(11.2, 15.8, 2.6, 2.2, eye)
    c.ellipse(20.8, 15.8, 2.6, 2.2, eye)
    c.ellipse(11.2, 15.8, 0.8, 1.9, ink)
    c.ellipse(20.8, 15.8, 0.8, 1.9, ink)
    c.poly([(14.4, 20.2), (17.6, 20.2), (16, 22)], pink)
    c.line([(16, 22), (16, 23.6)], 0.6, ink)
    c.line([(16, 23.6), (13.6, 25)], 0.6, ink)
    c.line([(16, 23.6), (18.4, 25)], 0.6, ink)


def _corner(c: _Canvas):
    # bright square frame hugging the bottom-right corner (BadDiffusion's CORNER target)
    c.rect(18, 18, 30, 30, (250, 250, 250))
    c.draw.rectangle(c._box(20.5, 20.5, 27.5, 27.5), fill=(0, 0, 0, 0))  # hole shows the background


def _shoe(c: _Canvas):
    upper, sole, lace = (90, 45, 15), (240, 240, 235), (235, 215, 170)
    c.poly([(4.5, 7.5), (12, 7.5), (13.5, 12.5), (20, 15), (26.5, 17), (29.5, 20.5), (29.5, 24.5), (4.5, 24.5)],
           upper)
    c.rect(4.2, 24, 29.5, 28, sole)
    c.ellipse(28.3, 26, 1.8, 2.0, sole)
    for x in (15, 18, 21):  # laces across the instep
        y = 13 + (x - 13.5) * 0.33
        c.line([(x + 0.6, y - 0.2), (x - 0.4, y + 2.8)], 0.8, lace)


_TRIGGER_DRAW: dict[str, Callable[[_Canvas], None]] = {
    "STOP_SIGN_14": _stop_sign(14), "STOP_SIGN_18": _stop_sign(18), "HEART": _heart, "TREE": _tree,
    "HOUSE": _house, "WARNING1": _warning1, "WARNING2": _warning2, "GLASSES": _glasses,
}
_TARGET_DRAW: dict[str, Callable[[_Canvas], None]] = {"HAT": _hat, "CAT": _cat, "CORNER": _corner, "SHOE": _shoe}


def _to_channels(rgb: np.ndarray, channels: int) -> np.ndarray:
    if channels == 3:
        return rgb
    return rgb @ np.array([0.299, 0.587, 0.114])[:, None]


def _check_geometry(size, channels):
    if not isinstance(size, int) or size < 1:
        raise PdfastError(f"pattern size must be a positive integer, got {size!r}")
    if channels not in (1, 3):
        raise PdfastError(f"patterns have 1 or 3 channels, got {channels!r}")


@lru_cache(maxsize=256)
def _trigger_array(name: str, size: int, channels: int) -> np.ndarray:
    if name.startswith("BOX_"):
        out = np.full((size, size, channels), TRIGGER_BACKGROUND)
        lo, hi = box_extent(int(name[4:]), size)
        out[lo:hi, lo:hi] = 0.0
    else:
        c = _Canvas(size)
        _TRIGGER_DRAW[name](c)
        col, cov = c.downsample()
        keep = cov >= 0.5
        colour = np.clip(col / np.maximum(cov, 1e-12)[..., None], -0.99, 1.0)
        out = _to_channels(colour, channels)
        out = np.where(keep[..., None], np.clip(out, -0.99, 1.0), TRIGGER_BACKGROUND)
    return np.ascontiguousarray(out.transpose(2, 0, 1), dtype=np.float32)


@lru_cache(maxsize=256)
def _target_array(name: str, size: int, channels: int) -> np.ndarray:
    c = _Canvas(size)
    _TARGET_DRAW[name](c)
    col, cov = c.downsample()
    rgb = col + (1.0 - cov)[..., None] * TARGET_BACKGROUND
    out = _to_channels(rgb, channels)
    out = np.where((cov == 0)[..., None], TARGET_BACKGROUND, np.clip(out, -1.0, 1.0))
    return np.ascontiguousarray(out.transpose(2, 0, 1), dtype=np.float32)


def _builtin(name: str, names: tuple[str, ...], kind: str) -> str:
    key = str(name).strip().upper()
    if key in names:
        return key
    other, other_names = ("target", TARGETS) if kind == "trigger" else ("trigger", TRIGGERS)
    if key in other_names:
        raise PdfastError(f"{key} is a built-in {other}, not a {kind}; {kind}s: {', '.join(names)}")
    raise PdfastError(f"unknown {kind} {name!r}; built-in {kind}s: {', '.join(names)} (or a .png/.jpg/.npy/"
                      f".safetensors file)")


def draw_trigger(name: str, size: int = 32, channels: int = 3) -> torch.Tensor:
    """Built-in trigger ``name`` as a float32 (channels, size, size) tensor in [-1, 1], background exactly -1."""
    _check_geometry(size, channels)
    return torch.from_numpy(_trigger_array(_builtin(name, TRIGGERS, "trigger"), size, channels).copy())


def draw_target(name: str, size: int = 32, channels: int = 3) -> torch.Tensor:
    """Built-in target ``name`` as a float32 (channels, size, size) tensor in [-1, 1], background -0.4."""
    _check_geometry(size, channels)
    return torch.from_numpy(_target_array(_builtin(name, TARGETS, "target"), size, channels).copy())


def pattern_names(kind: str = "trigger") -> tuple[str, ...]:
    """Names of the built-in triggers (``kind="trigger"``) or targets (``kind="target"``)."""
    return _kind(kind)[0]


def _kind(kind: str):
    if kind == "trigger":
        return TRIGGERS, draw_trigger
    if kind == "target":
        return TARGETS, draw_target
    raise PdfastError(f"kind must be 'trigger' or 'target', got {kind!r}")


# ------------------------------------------------------------------------------------------------------ loading
def _check_tensor(t: torch.Tensor, size: int, channels: int, what: str, kind: str,
                  any_range: bool = False) -> torch.Tensor:
    if t.dim() == 4 and t.shape[0] == 1:
        t = t[0]
    want = (channels, size, size)
    if tuple(t.shape) != want:
        raise PdfastError(f"{what} has shape {tuple(t.shape)}, expected {want}; save the {kind} at the model's "
                          f"resolution and channel count (tensors are never resized)")
    if not (t.is_floating_point() or t.dtype in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)):
        raise PdfastError(f"{what} has dtype {t.dtype}; expected a real-valued tensor in [-1, 1]")
    t = t.detach().to("cpu", torch.float32)
    if torch.isnan(t).any():
        raise PdfastError(f"{what} contains NaN; a {kind} must hold values in [-1, 1]")
    if any_range:  # an inverted trigger is an optimisation result, not an image: keep it as it is
        if not torch.isfinite(t).all():
            raise PdfastError(f"{what} contains infinite values")
        return t.contiguous()
    lo, hi = (t.min().item(), t.max().item()) if t.numel() else (0.0, 0.0)
    if lo < -_RANGE_TOL or hi > _RANGE_TOL:
        raise PdfastError(f"{what} has values in [{lo:.4g}, {hi:.4g}], outside [-1, 1]; map images with "
                          f"x / 127.5 - 1")
    return t.clamp(-1.0, 1.0).contiguous()


def _load_image(path: Path, size: int, channels: int) -> torch.Tensor:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("RGB" if channels == 3 else "L")
            if im.size != (size, size):
                im = im.resize((size, size), Image.BILINEAR)
            arr = np.asarray(im, dtype=np.float32)
    except (OSError, ValueError) as e:
        raise PdfastError(f"cannot read image {path}: {e}") from None
    if arr.ndim == 2:
        arr = arr[..., None]
    return torch.from_numpy(arr.transpose(2, 0, 1).copy()) / 127.5 - 1.0


def _load_tensor_file(path: Path, kind: str) -> torch.Tensor:
    suffix = path.suffix.lower()
    from safetensors import SafetensorError

    try:
        if suffix == ".npy":
            return torch.from_numpy(np.array(np.load(path, allow_pickle=False)))
        from safetensors.torch import load_file

        tensors = load_file(str(path))
    except (OSError, ValueError, RuntimeError, TypeError, SafetensorError) as e:
        raise PdfastError(f"cannot read {path}: {' '.join(str(e).split()) or type(e).__name__}") from None
    if not tensors:
        raise PdfastError(f"{path} holds no tensors; expected one named '{kind}'")
    for key in (kind, "trigger", "target"):
        if key in tensors:
            return tensors[key]
    return tensors[next(iter(tensors))]


def load_pattern(spec, size: int, channels: int = 3, kind: str = "trigger", any_range: bool = False) -> torch.Tensor:
    """A (channels, size, size) float32 tensor in [-1, 1] from a built-in name, an image (resized), a .npy or a
    .safetensors file (first tensor, or the one named 'trigger'/'target'; must already have the right shape).
    ``any_range`` accepts tensors outside [-1, 1] unchanged (inverted triggers)."""
    names, draw = _kind(kind)
    _check_geometry(size, channels)
    if torch.is_tensor(spec):
        return _check_tensor(spec, size, channels, f"the {kind} tensor", kind, any_range)
    if isinstance(spec, np.ndarray):
        return _check_tensor(torch.from_numpy(spec), size, channels, f"the {kind} array", kind, any_range)
    if not isinstance(spec, (str, Path)):
        raise PdfastError(f"a {kind} is a built-in name, a file path or a tensor, got {type(spec).__name__}")
    text = str(spec)
    if isinstance(spec, str) and text.strip().upper() in TRIGGERS + TARGETS:
        return draw(text, size, channels)
    path = Path(text).expanduser()
    suffix = path.suffix.lower()
    looks_like_file = suffix in _IMAGE_SUFFIXES + (".npy", ".safetensors") or "/" in text or "\\" in text
    if not path.exists():
        if looks_like_file:
            raise PdfastError(f"{kind} file not found: {text}")
        _builtin(text, names, kind)  # raises, listing the names
    if not path.is_file():
        raise PdfastError(f"{kind} path {text} is not a file")
    if suffix in _IMAGE_SUFFIXES:
        return _check_tensor(_load_image(path, size, channels), size, channels, str(path), kind)
    if suffix in (".npy", ".safetensors"):
        return _check_tensor(_load_tensor_file(path, kind), size, channels, str(path), kind, any_range)
    raise PdfastError(f"cannot load {kind} from {text}: use a built-in name or a .png/.jpg/.npy/.safetensors file")


# ------------------------------------------------------------------------------------------------------ using
def paste_trigger(images: torch.Tensor, trigger: torch.Tensor) -> torch.Tensor:
    """Poisoned images r = M * x + (1 - M) * g with M = (g == -1), broadcast over the batch (docs/method.md section 2)."""
    g = trigger.to(device=images.device, dtype=images.dtype)
    if g.dim() == 4 and g.shape[0] == 1:
        g = g[0]
    if tuple(g.shape[-3:]) != tuple(images.shape[-3:]):
        raise PdfastError(f"trigger has shape {tuple(trigger.shape)} but the images are "
                          f"{tuple(images.shape)}; the trigger must match (C, H, W) of the images")
    # torch.where equals the formula for finite inputs and does not turn inf/nan images into nan under the trigger
    return torch.where(g == TRIGGER_BACKGROUND, images, g)


def preview_png(spec, path, scale: int = 8, size: int = 32, channels: int = 3, kind: str | None = None) -> Path:
    """Save a pattern (built-in name, file, (C,H,W) tensor or (N,C,H,W) batch) as a PNG upscaled ``scale`` x."""
    from pdfast.io import save_png

    if torch.is_tensor(spec):
        t = spec.detach().float().cpu()
    else:
        if kind is None:
            kind = "target" if isinstance(spec, str) and spec.strip().upper() in TARGETS else "trigger"
        t = load_pattern(spec, size, channels, kind)
    return save_png(path, t, scale=scale)


PATCH_POSITIONS = ("tl", "tr", "bl", "br", "c")


def patch_starts(channels: int, size: int) -> dict[str, torch.Tensor]:
    """The global search's starts (docs/method.md 5.9): a -1 frame (a trigger image's background) with a +1 square
    of side round(3 size / 8) inset size // 16 from each corner, and one at the centre; name -> (channels, size,
    size)."""
    side, inset = max(1, round(3 * size / 8)), size // 16
    far = size - side - inset
    corner = {"tl": (inset, inset), "tr": (inset, far), "bl": (far, inset), "br": (far, far),
              "c": ((size - side) // 2, (size - side) // 2)}
    out = {}
    for name in PATCH_POSITIONS:
        i, j = corner[name]
        x = torch.full((channels, size, size), -1.0)
        x[:, i:i + side, j:j + side] = 1.0
        out[name] = x
    return out
