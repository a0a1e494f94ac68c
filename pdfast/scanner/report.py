"""The scan's report for a person: DIR/report.html (one self-contained page: thumbnails embedded as base64 PNG data
URIs, no external assets, readable offline) and DIR/report.md (the same table, images linked from the output
folders), models sorted by margin (most suspicious first; failed models last), with the totals."""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path

THUMB = 128  # pixels, the longer side of a thumbnail
CSS = ("body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
       "padding:4px 8px;vertical-align:middle;text-align:left}th{background:#f0f0f0}.backdoored{background:#fde2e1}"
       ".failed{background:#fff4cc}img{image-rendering:pixelated}code{font-size:90%}")


def ordered(rows: list[dict]) -> list[dict]:
    """Finished rows by margin (lowest, i.e. most backdoored, first), then failed rows by name."""
    done = sorted((r for r in rows if r["status"] == "done"),
                  key=lambda r: (r["margin"] is None, r["margin"] if r["margin"] is not None else 0.0, r["name"]))
    return done + sorted((r for r in rows if r["status"] != "done"), key=lambda r: r["name"] or "")


def totals(rows: list[dict]) -> dict:
    """Counts: models, done, backdoored, clean, failed."""
    done = [r for r in rows if r["status"] == "done"]
    return {"models": len(rows), "done": len(done), "backdoored": sum(r["verdict"] == "backdoored" for r in done),
            "clean": sum(r["verdict"] == "clean" for r in done), "failed": len(rows) - len(done)}


def thumbnail(png: Path, square_top: bool = False) -> str | None:
    """A data URI of a PNG shrunk to THUMB pixels (its top square only with ``square_top``: the first rows of a
    sample grid); None when the file is missing or unreadable."""
    from PIL import Image

    try:
        img = Image.open(png)
        img.load()
    except (OSError, ValueError):
        return None
    if square_top and img.height > img.width:
        img = img.crop((0, 0, img.width, img.width))
    img.thumbnail((THUMB * 2 if not square_top else THUMB, THUMB), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _num(v, fmt: str = "{:.4g}") -> str:
    """A number formatted, or '' for None."""
    return "" if v is None else fmt.format(v)


def _cells(r: dict) -> list[str]:
    """The text cells of one row (verdict or status, statistic, margin, ASR, fidelity, seconds)."""
    verdict = r["verdict"] if r["status"] == "done" else f"FAILED ({r['error_kind']})"
    stat = f"{r['statistic']} {_num(r['value'])} (threshold {_num(r['threshold'])})" if r["status"] == "done" else ""
    return [verdict, stat, _num(r["margin"], "{:+.3f}"), _num(r["asr"], "{:.3f}"), _num(r["pattern_cos"], "{:.3f}"),
            _num(r["seconds"], "{:.1f}")]


HEAD = ["#", "model", "verdict", "statistic", "margin", "ASR", "pattern cos", "seconds", "trigger", "samples",
        "pattern samples"]
PICTURES = (("trigger.png", "trigger", False), ("samples.png", "samples", True),
            ("pattern_samples.png", "pattern samples", True))  # file, label, only its top square


def write_html(out: Path, rows: list[dict], meta: dict) -> Path:
    """DIR/report.html: the totals, the settings, one table row per model with its thumbnails or its error."""
    from ..io import atomic_write_bytes

    t = totals(rows)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>pdfast scan</title><style>{CSS}</style>"
             "</head><body><h1>pdfast scan</h1>",
             f"<p><b>{t['models']}</b> models: <b>{t['backdoored']}</b> backdoored, {t['clean']} clean, "
             f"{t['failed']} failed. Sorted by margin = log(statistic / threshold): below 0 is backdoored.</p>",
             f"<p>{html.escape(meta.get('summary', ''))}</p><table><tr>"
             + "".join(f"<th>{h}</th>" for h in HEAD) + "</tr>"]
    for i, r in enumerate(ordered(rows), 1):
        parts.append(_html_row(out, i, r))
    parts.append("</table></body></html>\n")
    path = out / "report.html"
    atomic_write_bytes(path, "\n".join(parts).encode("utf-8"))
    return path


def _html_row(out: Path, i: int, r: dict) -> str:
    """One <tr>: name (revision, path as its title), the cells, the thumbnails or the error across them."""
    cls = "failed" if r["status"] != "done" else ("backdoored" if r["verdict"] == "backdoored" else "")
    name = html.escape(r["name"] or "") + (f"<br><small>{html.escape(r['revision'])}</small>" if r["revision"] else "")
    cells = "".join(f"<td>{html.escape(c)}</td>" for c in _cells(r))
    if r["status"] == "done" and r["out_dir"]:
        imgs = [(thumbnail(out / r["out_dir"] / f, top), label) for f, label, top in PICTURES]
        pics = "".join(f"<td><img src='{u}' alt='{a}'></td>" if u else "<td></td>" for u, a in imgs)
    else:
        pics = f"<td colspan='{len(PICTURES)}'><code>{html.escape(r['error'] or '')}</code></td>"
    return (f"<tr class='{cls}'><td>{i}</td><td title='{html.escape(r['path'] or '')}'>{name}</td>{cells}"
            f"{pics}</tr>")


def write_markdown(out: Path, rows: list[dict], meta: dict) -> Path:
    """DIR/report.md: the same table in Markdown, the images linked from each model's output folder."""
    from ..io import atomic_write_bytes

    t = totals(rows)
    lines = ["# pdfast scan", "", f"{t['models']} models: **{t['backdoored']} backdoored**, {t['clean']} clean, "
             f"{t['failed']} failed. Sorted by margin = log(statistic / threshold): below 0 is backdoored.", "",
             meta.get("summary", ""), "", "| " + " | ".join(HEAD) + " |", "|" + " --- |" * len(HEAD)]
    for i, r in enumerate(ordered(rows), 1):
        name = (r["name"] or "").replace("|", "\\|")
        cells = [c.replace("|", "\\|") for c in _cells(r)]
        if r["status"] == "done" and r["out_dir"]:
            pics = [f"![trigger]({r['out_dir']}/trigger.png)"] + [f"[{label}]({r['out_dir']}/{f})"
                                                                  for f, label, _ in PICTURES[1:]]
        else:
            pics = [(r["error"] or "").replace("|", "\\|")] + [""] * (len(PICTURES) - 1)
        lines.append("| " + " | ".join([str(i), name, *cells, *pics]) + " |")
    path = out / "report.md"
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode("utf-8"))
    return path
