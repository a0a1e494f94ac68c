"""The trigger sheet (research/results/quality-triggers.png): per model the target, the truth and every method's
trigger, stretched pattern and first sample, labelled (pdfast.io's image conversion and text rendering)."""
from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

from .scoring import method_label, method_order
from .zoo import ZooModel, truth_tensors

if TYPE_CHECKING:
    import torch
    from PIL import Image

PX = 13                                      # label text height
LAB_H, NAME_H, GAP = PX + 6, PX + 10, 4      # a panel's label row, a model's name row, the space between panels
LEGEND = ("triggers clamped to [-1, 1]; p* = pattern (flat part removed) stretched to full range; sample = first "
          "image from eps + trigger")


def sheet(entries: list[dict], models: list[ZooModel], cache: Path, path: Path, panel: int = 64,
          footer: str = "") -> None:
    """One row per model: target, truth (+ its first sample), then for every method its trigger, stretched pattern
    and first sample; labelled. Nothing is written when no model has an entry."""
    from pdfast.io import atomic_write_bytes

    by_model: dict[str, list] = {}
    for e in entries:
        if not e["method"].startswith("trivial:"):
            by_model.setdefault(e["model"], []).append(e)
    columns = sheet_columns(by_model)
    rows = []
    for m in models:
        es = sorted(by_model.get(m.name, []), key=method_order)
        if es:
            cells = model_cells(m, es, cache, panel)
            rows.append((f"{m.name} ({m.split}, {'backdoored' if m.backdoored else 'clean'})",
                         [(c, cells.get(c)) for c in columns]))
    if not rows:
        return
    buf = io.BytesIO()
    compose(rows, panel, footer).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def sheet_columns(by_model: dict[str, list]) -> list[str]:
    """Fixed columns, so every method sits under the same heading in every row (blank where not run)."""
    inv_keys = sorted({(method_order(e), method_label(e)) for es in by_model.values() for e in es
                       if e["method"] != "truth"})
    columns = ["target y", "truth g", "g sample"]
    for _, lab in inv_keys:
        lab = lab.replace(" K=", " K")
        columns += [lab, f"{lab} p*", f"{lab} sample"]
    return columns


def model_cells(m: ZooModel, es: list[dict], cache: Path, panel: int) -> dict[str, "Image.Image"]:
    """One model's panels by column: target and truth from the model folder, the rest from each entry's tensors."""
    from safetensors.torch import load_file

    cells = {}
    g, y = truth_tensors(m)
    if g is not None:
        cells["target y"], cells["truth g"] = tile(y, panel), tile(g, panel)
    for e in es:
        f = cache / e["file"]
        try:
            t = load_file(str(f.with_suffix(".safetensors")))
        except Exception:  # noqa: BLE001 - no tensors (a failed unit) or an unreadable file: a blank panel
            continue
        if e["method"] == "truth":
            cells["g sample"] = tile(t["samples"][0], panel)
            continue
        lab = method_label(e).replace(" K=", " K")
        cells[lab] = tile(t["trigger"].clamp(-1, 1), panel)
        cells[f"{lab} p*"] = tile(stretch(t["pattern"]), panel)
        cells[f"{lab} sample"] = tile(t["samples"][0], panel)
    return cells


def tile(img: "torch.Tensor", panel: int) -> "Image.Image":
    """An image in [-1, 1] as an RGB panel of panel x panel pixels (nearest-neighbour upscaling)."""
    from PIL import Image

    from pdfast.io import to_uint8

    a = to_uint8(img.float())
    im = Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a).convert("RGB")
    return im.resize((panel, panel), Image.NEAREST)


def stretch(p: "torch.Tensor") -> "torch.Tensor":
    """The pattern contrast-stretched to the full range [-1, 1] (a flat pattern: all 0)."""
    import torch

    lo, hi = float(p.min()), float(p.max())
    return torch.zeros_like(p) if hi - lo < 1e-12 else (p - lo) / (hi - lo) * 2 - 1


def compose(rows: list[tuple[str, list]], panel: int, footer: str) -> "Image.Image":
    """The picture: the legend, then per row the model's name and its labelled panels, then the footer."""
    from PIL import Image

    from pdfast.io import text_mask

    ncol = max(len(p) for _, p in rows)
    legend = text_mask(LEGEND, PX)
    foot = text_mask(footer, PX - 2) if footer else None
    width = max(ncol * (panel + GAP) + GAP, legend.width + 2 * GAP, (foot.width + 2 * GAP) if foot else 0)
    height = sum(NAME_H + LAB_H + panel + GAP for _ in rows) + 3 * (PX + 8)
    pic = Image.new("RGB", (width, height), "white")
    pic.paste("black", (GAP, 4), legend)
    yoff = PX + 12
    for name, panels in rows:
        pic.paste("black", (GAP, yoff + 2), text_mask(name, PX + 1))
        yoff += NAME_H
        for i, (lab, im) in enumerate(panels):
            if im is not None:
                paste_panel(pic, GAP + i * (panel + GAP), yoff, lab, im, panel)
        yoff += LAB_H + panel + GAP
    if foot is not None:
        pic.paste("black", (GAP, yoff + 2), foot)
    return pic


def paste_panel(pic: "Image.Image", x: int, y: int, label: str, im: "Image.Image", panel: int) -> None:
    """One panel at (x, y): its label, shrunk to the panel's width when longer, above the image."""
    from pdfast.io import text_mask

    mk = text_mask(label, PX - 3)
    if mk.width > panel:
        mk = mk.resize((panel, max(1, mk.height * panel // mk.width)))
    pic.paste("black", (x, y + (LAB_H - mk.height) // 2), mk)
    pic.paste(im, (x, y + LAB_H))
