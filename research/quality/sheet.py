"""The trigger sheet (research/results/quality-triggers.png): per model the target, the truth and every method's
trigger, stretched pattern and first sample, labelled."""
from __future__ import annotations

from pathlib import Path

from .scoring import method_label, method_order
from .zoo import ZooModel, truth_tensors



def sheet(entries: list[dict], models: list[ZooModel], cache: Path, path: Path, panel: int = 64,
          footer: str = "") -> None:
    """One row per model: target, truth (+ its first sample), then for every method its trigger, stretched pattern
    and first sample; labelled. pdfast.io's image conversion and text rendering."""
    import torch
    from PIL import Image
    from safetensors.torch import load_file

    from pdfast.io import text_mask, atomic_write_bytes, to_uint8

    def tile(img: torch.Tensor) -> Image.Image:
        a = to_uint8(img.float())
        im = Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a).convert("RGB")
        return im.resize((panel, panel), Image.NEAREST)

    def stretch(p: torch.Tensor) -> torch.Tensor:
        lo, hi = float(p.min()), float(p.max())
        return torch.zeros_like(p) if hi - lo < 1e-12 else (p - lo) / (hi - lo) * 2 - 1

    by_model: dict[str, list] = {}
    for e in entries:
        if not e["method"].startswith("trivial:"):
            by_model.setdefault(e["model"], []).append(e)
    # fixed columns, so every method sits under the same heading in every row (blank where not run)
    inv_keys = sorted({(method_order(e), method_label(e)) for es in by_model.values() for e in es
                       if e["method"] != "truth"})
    columns = ["target y", "truth g", "g sample"]
    for _, lab in inv_keys:
        lab = lab.replace(" K=", " K")
        columns += [lab, f"{lab} p*", f"{lab} sample"]
    rows = []
    for m in models:
        es = sorted(by_model.get(m.name, []), key=method_order)
        if not es:
            continue
        cells: dict[str, Image.Image] = {}
        g, y = truth_tensors(m)
        if g is not None:
            cells["target y"], cells["truth g"] = tile(y), tile(g)
        for e in es:
            f = cache / e["file"]
            try:
                t = load_file(str(f.with_suffix(".safetensors")))
            except Exception:  # noqa: BLE001 - no tensors (a failed unit) or an unreadable file: a blank panel
                continue
            if e["method"] == "truth":
                cells["g sample"] = tile(t["samples"][0])
                continue
            lab = method_label(e).replace(" K=", " K")
            cells[lab] = tile(t["trigger"].clamp(-1, 1))
            cells[f"{lab} p*"] = tile(stretch(t["pattern"]))
            cells[f"{lab} sample"] = tile(t["samples"][0])
        panels = [(c, cells.get(c)) for c in columns]
        rows.append((f"{m.name} ({m.split}, {'backdoored' if m.backdoored else 'clean'})", panels))
    if not rows:
        return
    px = 13
    lab_h, name_h, gap = px + 6, px + 10, 4
    ncol = max(len(p) for _, p in rows)
    legend = text_mask("triggers clamped to [-1, 1]; p* = pattern (flat part removed) stretched to full range; "
                        "sample = first image from eps + trigger", px)
    foot = text_mask(footer, px - 2) if footer else None
    width = max(ncol * (panel + gap) + gap, legend.width + 2 * gap, (foot.width + 2 * gap) if foot else 0)
    height = sum(name_h + lab_h + panel + gap for _ in rows) + 3 * (px + 8)
    pic = Image.new("RGB", (width, height), "white")
    pic.paste("black", (gap, 4), legend)
    yoff = px + 12
    for name, panels in rows:
        pic.paste("black", (gap, yoff + 2), text_mask(name, px + 1))
        yoff += name_h
        for i, (lab, im) in enumerate(panels):
            if im is None:
                continue
            x = gap + i * (panel + gap)
            mk = text_mask(lab, px - 3)
            if mk.width > panel:
                mk = mk.resize((panel, max(1, mk.height * panel // mk.width)))
            pic.paste("black", (x, yoff + (lab_h - mk.height) // 2), mk)
            pic.paste(im, (x, yoff + lab_h))
        yoff += lab_h + panel + gap
    if foot is not None:
        pic.paste("black", (gap, yoff + 2), foot)
    import io

    buf = io.BytesIO()
    pic.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
