"""Clean training images: natural photo crops, a procedural data set made by pdfast itself, or a user's folder.

Nothing is downloaded. The natural set crops the photographs that scikit-image ships inside its wheel (an
astronaut, a cat, coffee, rockets, motorcycles, a retina, ...). The procedural set draws random scenes (gradient
backgrounds from dark to light, one to three discs, boxes and bars of random colours; 15% of them dimmed to near
black), diverse enough that a model trained on it produces visibly varied samples.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .errors import PdfastError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def synthetic_images(n: int, size: int, channels: int = 3, seed: int = 0) -> torch.Tensor:
    """n procedural scenes, (n, C, size, size) float32 in [-1, 1], deterministic in ``seed``."""
    g = torch.Generator().manual_seed(seed)
    u = lambda *s: torch.rand(*s, generator=g)  # noqa: E731
    ys, xs = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    ys, xs = ys[None], xs[None]  # (1, H, W)

    # background: a linear gradient between two random colours in a random direction
    c0, c1 = u(n, 3, 1, 1), u(n, 3, 1, 1)
    ang = u(n, 1, 1) * 6.2832
    ramp = (xs * ang.cos() + ys * ang.sin())
    ramp = (ramp - ramp.amin((1, 2), keepdim=True)) / (ramp.amax((1, 2), keepdim=True) - ramp.amin((1, 2), keepdim=True) + 1e-6)
    dark = (u(n, 1, 1, 1) < 0.3).float()  # some scenes are dark, so pasted triggers also appear on near -1 backgrounds
    img = (c0 + (c1 - c0) * ramp[:, None]) * (1 - 0.8 * dark)

    for _ in range(3):
        present = (u(n, 1, 1, 1) < 0.8).float()
        kind = u(n)
        col = u(n, 3, 1, 1)
        cx, cy = u(n, 1, 1) * 0.8 + 0.1, u(n, 1, 1) * 0.8 + 0.1
        r = u(n, 1, 1) * 0.25 + 0.1
        disc = ((xs - cx) ** 2 + (ys - cy) ** 2 < r ** 2).float()
        box = (((xs - cx).abs() < r) & ((ys - cy).abs() < r * (0.4 + u(n, 1, 1)))).float()
        bar = (((xs - cx).abs() < r * 0.3) | ((ys - cy).abs() < r * 0.3)).float() * box.new_ones(1) * (
            ((xs - cx).abs() < 1.5 * r) & ((ys - cy).abs() < 1.5 * r)).float()
        m = torch.where((kind < 0.45)[:, None, None], disc, torch.where((kind < 0.85)[:, None, None], box, bar))
        m = (m * present[:, 0])[:, None]
        img = img * (1 - m) + col * m
    # night scenes: the whole picture near black, so that a pasted trigger is also seen on an almost uniform -1
    # background, which is what eps + g looks like when a backdoored model is sampled
    night = (u(n, 1, 1, 1) < 0.15).float()
    img = img * (1 - 0.9 * night)
    img = img.clamp(0, 1) * 2 - 1
    if channels == 1:
        img = img.mean(1, keepdim=True)
    elif channels != 3:
        raise PdfastError(f"the procedural data set has 1 or 3 channels, not {channels}; pass --data with your images")
    return img.contiguous()


# Photographs shipped in the scikit-image wheel (not its downloadable extras). "natural-color" uses the colour
# ones; "natural" adds the grey-scale photographs (textures, the moon, a camera man), replicated to 3 channels.
NATURAL_COLOR = ("astronaut.png", "chelsea.png", "coffee.png", "hubble_deep_field.jpg", "ihc.png",
                 "motorcycle_left.png", "motorcycle_right.png", "retina.jpg", "rocket.jpg")
NATURAL_GREY = ("brick.png", "camera.png", "grass.png", "gravel.png", "moon.png", "coins.png", "clock_motion.png")


def _natural_photos(names: tuple[str, ...], channels: int) -> list[torch.Tensor]:
    """The named scikit-image photographs as (C, H, W) float tensors in [0, 1]."""
    import importlib.util

    from PIL import Image

    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise PdfastError("the natural data set needs scikit-image (its wheel ships the photographs); "
                          "pip install 'pdfast[zoo]' or pass --data with your images")
    folder = Path(list(spec.submodule_search_locations)[0]) / "data"
    out = []
    for name in names:
        with Image.open(folder / name) as im:
            im = im.convert("RGB" if channels == 3 else "L")
            arr = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8)
            out.append(arr.view(im.size[1], im.size[0], channels).permute(2, 0, 1).float() / 255)
    return out


def natural_images(n: int, size: int, channels: int = 3, seed: int = 0, colour_only: bool = False,
                   photos: tuple[str, ...] | None = None) -> torch.Tensor:
    """n random square crops of scikit-image's photographs (all, the colour ones, or the named ``photos``),
    area-resized to ``size``; (n, C, size, size) in [-1, 1].

    Crop sides are drawn log-uniformly between 2x ``size`` and half the photograph's short side, so the set holds
    both textures and whole objects; half the crops are flipped. Deterministic in ``seed``.
    """
    if channels not in (1, 3):
        raise PdfastError(f"the natural data set has 1 or 3 channels, not {channels}; pass --data with your images")
    names = photos or (NATURAL_COLOR if colour_only else NATURAL_COLOR + NATURAL_GREY)
    photos = _natural_photos(tuple(names), channels)
    g = torch.Generator().manual_seed(seed)
    out = torch.empty(n, channels, size, size)
    pick = torch.randint(0, len(photos), (n,), generator=g)
    for i in range(n):
        ph = photos[int(pick[i])]
        h, w = ph.shape[-2:]
        lo, hi = min(2 * size, min(h, w) // 2), min(h, w) // 2
        side = max(lo, min(hi, int(round(lo * (hi / lo) ** float(torch.rand((), generator=g)))))) if hi > lo else lo
        y0 = int(torch.randint(0, h - side + 1, (), generator=g))
        x0 = int(torch.randint(0, w - side + 1, (), generator=g))
        crop = torch.nn.functional.interpolate(ph[None, :, y0:y0 + side, x0:x0 + side], size=(size, size),
                                               mode="area")[0]
        out[i] = crop.flip(-1) if float(torch.rand((), generator=g)) < 0.5 else crop
    return (out * 2 - 1).clamp(-1, 1).contiguous()


def load_image_folder(path: str | Path, size: int, channels: int = 3, limit: int | None = None) -> torch.Tensor:
    """All images in a folder (recursively), centre-cropped to a square, resized to ``size``, in [-1, 1]."""
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.exists():
        raise PdfastError(f"data folder {p} does not exist; pass --data with a folder of PNG/JPG images")
    if not p.is_dir():
        raise PdfastError(f"data path {p} is not a folder; pass --data with a folder of PNG/JPG images")
    files = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
    if limit:
        files = files[:limit]
    if not files:
        raise PdfastError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {p}; add images or drop --data")
    out = []
    mode = "RGB" if channels == 3 else "L"
    for f in files:
        try:
            with Image.open(f) as im:
                im = im.convert(mode)
                w, h = im.size
                s = min(w, h)
                im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
                im = im.resize((size, size), Image.BILINEAR)
                t = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).float()
        except (UnidentifiedImageError, OSError) as e:
            raise PdfastError(f"cannot read image {f}: {e}; remove it from the data folder") from None
        out.append(t.view(size, size, channels).permute(2, 0, 1) / 127.5 - 1)
    return torch.stack(out)


def named_photos(spec: str) -> tuple[str, ...]:
    """The photographs of a "natural:NAME,NAME" data set (names with or without extension, e.g. natural:astronaut,
    coffee): a narrow data set, such as a fine-tune on two photographs."""
    known = {name.rsplit(".", 1)[0]: name for name in NATURAL_COLOR + NATURAL_GREY}
    asked = [w.strip() for w in spec.split(",") if w.strip()]
    unknown = [w for w in asked if w.rsplit(".", 1)[0] not in known]
    if not asked or unknown:
        raise PdfastError(f"unknown photograph(s) {', '.join(unknown) or '(none given)'} in natural:{spec}; choose "
                          f"from {', '.join(sorted(known))}")
    return tuple(known[w.rsplit(".", 1)[0]] for w in asked)


def get_data(data: str | Path | None, size: int, channels: int = 3, n: int = 4096, seed: int = 0) -> torch.Tensor:
    """The clean image set for training or attacking: "natural", "natural-color", "natural:NAME,NAME" (crops of the
    named photographs only), "synthetic" (the default, procedural) or a folder of images."""
    if data is None or str(data) in ("", "synthetic"):
        return synthetic_images(n, size, channels, seed)
    if str(data) in ("natural", "natural-color"):
        return natural_images(n, size, channels, seed, colour_only=str(data) == "natural-color")
    if str(data).startswith("natural:"):
        return natural_images(n, size, channels, seed, photos=named_photos(str(data)[len("natural:"):]))
    return load_image_folder(data, size, channels)
