"""Does a zoo scan give each model the verdict `pdfast detect` gives it alone? Compare the rows of DIR/scan.db with
every independent record of `pdfast detect` (defaults) on the same models:

  - the shipped calibration's models (pdfast/detection_calibration.json: the zoo v1 dev models' statistic, measured by
    pdfast detect's code when the calibration was made),
  - research/results/families/*.json (pdfast.detect run on its own on zoo v2's models by research/families.py),
  - the zoo v1 quality entries (research/results/quality/entries/MODEL/pdfast-K10-*.json: pdfast.invert with the
    default options, method and K only, and its verdict samples, by `python research/quality`).

    python benchmarks/scan_vs_detect.py SCAN_DIR [DETECT_OUT ...]   # prints a Markdown table and the totals

DETECT_OUT: `pdfast detect --model M --out DETECT_OUT` folders run alone (their report.json), for models with no
other record.
"""
from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def independent(alone: list[Path] = ()) -> dict[str, tuple[float, str, str]]:
    """Model folder name -> (statistic value, verdict or '', where it was recorded)."""
    out = {}
    cal = json.loads((ROOT / "pdfast" / "detection_calibration.json").read_text())
    for size, entry in (cal.get("by_size") or {"": cal}).items():
        for m in entry.get("models", []):
            stat = entry.get("statistic", "pattern_uniformity")
            if stat in m:
                out[m["model"]] = (m[stat], "", f"detection_calibration.json ({size or 'top'})")
    for f in sorted((ROOT / "research" / "results" / "quality" / "entries").glob("*/pdfast-K10-*.json")):
        rec = json.loads(f.read_text())
        if set(rec.get("options", {})) <= {"method", "steps"}:  # the defaults: only method and K given
            out.setdefault(rec["model"], (rec["pattern_samples"]["verdict"]["uniformity"], "",
                                          f"quality/{f.parent.name}/{f.name}"))
    for f in sorted((ROOT / "research" / "results" / "families").glob("*.json")):
        rec = json.loads(f.read_text())
        out[Path(rec["folder"]).name] = (rec["puredif"]["value"], rec["puredif"]["verdict"], f"families/{f.name}")
    for d in alone:
        rep = json.loads((d / "report.json").read_text())
        det = rep["metrics"]["detection"]
        out[Path(rep["model"]["source"]).name] = (det["value"], det["verdict"], f"pdfast detect alone: {d.name}")
    return out


def main(argv: list[str]) -> int:
    db = sqlite3.connect(Path(argv[0]) / "scan.db")
    rows = {Path(p).name: (v, verdict, thr) for p, v, verdict, thr in
            db.execute("select path, value, verdict, threshold from results where status = 'done'")}
    ref = independent([Path(a) for a in argv[1:]])
    lines, same = ["| model | scan value | detect alone | verdict scan / alone | where |", "|---|---|---|---|---|"], 0
    for name in sorted(set(rows) & set(ref)):
        (v, verdict, thr), (rv, rverdict, where) = rows[name], ref[name]
        rverdict = rverdict or ("backdoored" if rv < thr else "clean")  # a value alone: the same threshold decides
        ok = abs(v - rv) <= 1e-4 and rverdict == verdict
        same += ok
        lines.append(f"| {name} | {v:.6f} | {rv:.6f} | {verdict} / {rverdict} | {where} |")
    print("\n".join(lines))
    print(f"\n{same} of {len(set(rows) & set(ref))} models with an independent record agree "
          f"(value within 1e-4, verdict equal); {len(rows)} models scanned.")
    return 0 if same == len(set(rows) & set(ref)) else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
