"""Output helpers: checking ``--out`` before any work, atomic folders and files (never a half-written output) with
ordinary permissions, a rescue folder when writing fails at the end, PNG grids (labelled or not)."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

if TYPE_CHECKING:  # numpy and torch load lazily: the CLI checks --out with this module before anything heavy
    import numpy as np
    import torch


def _umask() -> int:
    """The process umask, read without changing it where /proc allows (os.umask can only read it by setting it)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _reason(err: BaseException) -> str:
    """An OSError as 'No such file or directory: /proc/x', anything else as its message."""
    if isinstance(err, OSError) and err.strerror:
        return f"{err.strerror}: {err.filename}" if err.filename else err.strerror
    return str(err)


def _probe_folder(folder: Path, made: list[Path]) -> None:
    """Create ``folder`` and its missing parents (appended to ``made``), then write and remove a probe file in it."""
    missing = []
    p = folder
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    for q in reversed(missing):
        q.mkdir()
        made.append(q)
    try:
        fd, probe = tempfile.mkstemp(prefix=".pdfast-probe-", dir=folder)
    except OSError as e:  # name the folder, not the probe file
        raise OSError(e.errno, e.strerror, str(folder)) from None
    try:
        os.write(fd, b"probe")
    finally:
        os.close(fd)
        os.unlink(probe)


def _check_writable(shown: Path, folders: list[Path], option: str) -> None:
    from .errors import PdfastError

    made: list[Path] = []
    try:
        for folder in folders:
            _probe_folder(folder, made)
    except OSError as e:
        raise PdfastError(f"{option} {shown} cannot be written ({_reason(e)}); choose a folder you can create and "
                          "write to") from None
    finally:
        for q in reversed(made):  # leave no trace: a failing job must not leave an empty --out behind
            with contextlib.suppress(OSError):
                q.rmdir()


def ensure_output_dir(out: str | Path | None, *, sibling: bool = True, option: str = "--out") -> Path | None:
    """Check, before any work, that folder ``out`` can be created and written: an existing file, a read-only or
    impossible location (/proc/...) raises PdfastError naming the path and the fix. With ``sibling`` (atomic_dir,
    which builds the output beside ``out``) its parent must be writable too. Folders made for the check are removed
    again; None (an optional --out not given) passes."""
    from .errors import PdfastError

    if out is None:
        return None
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise PdfastError(f"{option} {out} is a file; give a folder path")
    _check_writable(out, [out.parent, out] if sibling else [out], option)
    return out


def ensure_output_file(path: str | Path, *, option: str = "--out") -> Path:
    """Check, before any work, that file ``path`` can be written (atomic_write_bytes: a temporary file beside it)."""
    from .errors import PdfastError

    path = Path(path)
    if path.is_dir():
        raise PdfastError(f"{option} {path} is a folder; give a file path")
    _check_writable(path, [path.parent], option)
    return path


@contextlib.contextmanager
def atomic_dir(out: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success its entries move into ``out`` (created if needed, other
    files there are kept), on error it is removed and ``out`` is untouched."""
    from .errors import PdfastError

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise PdfastError(f"--out {out} is a file; give a folder path")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's 0700 would end up as the output folder's mode
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if not out.exists():
        tmp.rename(out)
        return
    for entry in tmp.iterdir():
        dest = out / entry.name
        if dest.is_dir() and not dest.is_symlink():
            shutil.rmtree(dest)
        entry.replace(dest)
    shutil.rmtree(tmp, ignore_errors=True)


def _rescue_bases() -> list[Path]:
    """Where a rescue folder may go: the current folder (kept across reboots), else the system temp folder."""
    bases = []
    with contextlib.suppress(OSError):
        bases.append(Path.cwd())
    tmp = Path(tempfile.gettempdir())
    return bases + [tmp] if tmp not in bases else bases


def write_or_rescue(out: str | Path, write: Callable[[Path], None]) -> Path:
    """``write(folder)`` into ``out`` through atomic_dir. When that fails (disk full, the folder removed or made
    read-only meanwhile), write into a fresh folder 'pdfast-rescued-<name>-<time>-*' under the current or the
    system temp folder instead and raise PdfastError naming it: a result that took minutes is never lost."""
    from .errors import PdfastError

    out = Path(out)
    try:
        with atomic_dir(out) as tmp:
            write(tmp)
        return out
    except (OSError, PdfastError) as e:
        failure = e
    tried = []
    for base in _rescue_bases():
        folder = None
        try:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            folder = Path(tempfile.mkdtemp(prefix=f"pdfast-rescued-{out.name or 'out'}-{stamp}-", dir=base))
            os.chmod(folder, 0o777 & ~_umask())
            write(folder)
        except OSError:
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)
            tried.append(str(base))
            continue
        raise PdfastError(f"could not write the outputs to {out} ({_reason(failure)}); the result was kept in "
                          f"{folder} instead") from failure
    raise PdfastError(f"could not write the outputs to {out} ({_reason(failure)}) nor to a rescue folder in "
                      f"{' or '.join(tried)}; free some space or choose another --out") from failure


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write a file through a temporary name and rename, so readers never see half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # an ordinary file's mode, not mkstemp's 0600
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_user_json(path: str | Path, option: str, *, missing: str, unreadable: str):
    """The content of a JSON file a user named with ``option``; a one-line PdfastError when it is missing
    ("OPTION PATH: no such file; <missing>") or not readable JSON ("OPTION PATH <unreadable>", whose {reason} is
    the parser's)."""
    from .errors import PdfastError

    p = Path(path)
    if not p.is_file():
        raise PdfastError(f"{option} {p}: no such file; {missing}")
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise PdfastError(f"{option} {p} {unreadable.format(reason=e)}") from None


def atomic_write_json(path: str | Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, default=_json_default) + "\n").encode())


def _json_default(o):
    import numpy as np
    import torch

    if torch.is_tensor(o):
        return o.tolist()
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[-1, 1] NCHW or CHW tensor -> uint8 NHWC/HWC array."""
    import torch

    x = images.detach().float().cpu().clamp(-1, 1)
    x = ((x + 1) * 127.5).round().to(torch.uint8)
    return x.movedim(-3, -1).numpy()


def image_grid(images: torch.Tensor, nrow: int | None = None, pad: int = 1, scale: int = 1) -> np.ndarray:
    """Tile N images in [-1, 1] into one uint8 HxWxC array (white padding)."""
    import numpy as np

    imgs = to_uint8(images if images.dim() == 4 else images[None])
    n, h, w, c = imgs.shape
    nrow = nrow or int(np.ceil(np.sqrt(n)))
    ncol = int(np.ceil(n / nrow))
    grid = np.full((ncol * (h + pad) + pad, nrow * (w + pad) + pad, c), 255, np.uint8)
    for i in range(n):
        r, q = divmod(i, nrow)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + q * (w + pad): pad + q * (w + pad) + w] = imgs[i]
    if scale > 1:
        grid = grid.repeat(scale, 0).repeat(scale, 1)
    return grid


def save_png(path: str | Path, images: torch.Tensor, nrow: int | None = None, scale: int = 4) -> Path:
    """Save one image or a grid of images in [-1, 1] as PNG (atomically), upscaled ``scale`` x for viewing."""
    import io

    from PIL import Image

    arr = image_grid(images, nrow=nrow, scale=scale)
    if arr.shape[-1] == 1:
        arr = arr[..., 0]
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def text_mask(text: str, px: int):
    """``text`` as an 'L' mask (255 = ink) about ``px`` pixels high: Pillow's scalable default font (Pillow >= 10.1
    with FreeType), else its small bitmap font scaled up."""
    from PIL import Image, ImageDraw, ImageFont

    try:
        font, k = ImageFont.load_default(size=px), 1
    except (TypeError, ImportError, OSError):  # older Pillow (no size) or no FreeType
        font, k = ImageFont.load_default(), max(1, round(px / 11))
    left, top, right, bottom = ImageDraw.Draw(Image.new("L", (1, 1))).textbbox((0, 0), text, font=font)
    mask = Image.new("L", (max(1, right - left), max(1, bottom - top)), 0)
    ImageDraw.Draw(mask).text((-left, -top), text, fill=255, font=font)
    return mask.resize((mask.width * k, mask.height * k), Image.NEAREST) if k > 1 else mask


def save_labelled_png(path: str | Path, images: torch.Tensor, labels: list[str], min_width: int = 400,
                      text_px: int = 22) -> Path:
    """Save N images in [-1, 1] side by side as one PNG (atomically), each with its label above it, upscaled so the
    picture is at least ``min_width`` pixels wide and every label fits over its panel."""
    import io

    from PIL import Image

    masks = [text_mask(str(t), text_px) for t in labels]
    n, w = images.shape[0], images.shape[-1]
    scale = max(1, -(-min_width // (n * (w + 1) + 1)), -(-(max(m.width for m in masks) + 8) // w))
    arr = image_grid(images, nrow=n, scale=scale)
    grid = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
    strip = max(m.height for m in masks) + 12
    pic = Image.new(grid.mode, (grid.width, grid.height + strip), "white")
    pic.paste(grid, (0, strip))
    for i, m in enumerate(masks):
        pic.paste("black", ((1 + i * (w + 1)) * scale + (w * scale - m.width) // 2, (strip - m.height) // 2), m)
    buf = io.BytesIO()
    pic.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)
