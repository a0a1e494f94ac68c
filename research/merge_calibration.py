"""Merge the rows of several `pdfast calibrate` runs of one image size into one calibration entry, placed exactly as
one `pdfast calibrate` over all of their models would place it (pdfast.calibration.calibration_entry over the
concatenated rows), and write it into --out (merged per image size, pdfast.calibration.write_calibration). For
calibrations too long for one process: run `pdfast calibrate` on disjoint model lists in parallel, each into its
own copy of the calibration file, with the same options, then merge.

    python research/merge_calibration.py --size 16 --out pdfast/detection_calibration.json A.json B.json \\
        --source "the commands that wrote A.json and B.json"

Refuses inputs whose settings differ (the verdict compares them at every run) or that share a model.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def merge(entries: list[dict], source: str, later_wins: bool = False) -> dict:
    """One entry from several of one size and one setting: their rows, the threshold placed over all of them. A
    model in several inputs is refused, or with ``later_wins`` its row from the last of them is kept (a model
    re-measured by a later run)."""
    from pdfast.calibration import calibration_entry
    from pdfast.errors import PdfastError

    first = entries[0]
    for e in entries[1:]:
        if e["settings"] != first["settings"] or e["statistic"] != first["statistic"]:
            raise PdfastError("the calibrations differ in their settings or statistic; merge runs made with the "
                              "same options only")
    rows = [r for e in entries for r in e["models"]]
    if later_wins:
        last = {Path(r["model"]).name: i for i, r in enumerate(rows)}
        rows = [r for i, r in enumerate(rows) if last[Path(r["model"]).name] == i]
    names = [r["model"] for r in rows]
    if len(set(names)) != len(names):
        raise PdfastError(f"a model is in more than one input: {sorted({n for n in names if names.count(n) > 1})}")
    entry = calibration_entry(rows, first["statistic"], first["settings"], source=source)
    entry["engine"] = first.get("engine")
    return entry


def main(argv=None) -> int:
    from pdfast.calibration import write_calibration
    from pdfast.errors import PdfastError

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", nargs="+", help="calibration files written by pdfast calibrate")
    ap.add_argument("--size", required=True, help="the image size whose entries are merged, e.g. 16")
    ap.add_argument("--out", required=True, help="calibration file the merged entry is written into")
    ap.add_argument("--source", required=True, help="what made the inputs (their commands), for the provenance")
    ap.add_argument("--later-wins", action="store_true", help="a model in several inputs: keep its row from the last "
                                                               "one (a re-measurement) instead of refusing")
    args = ap.parse_args(argv)
    try:
        entries = [json.loads(Path(f).read_text())["by_size"][args.size] for f in args.inputs]
        path = write_calibration(args.out, merge(entries, args.source, args.later_wins))
    except (OSError, KeyError, ValueError) as e:
        print(f"error: cannot read a {args.size}x{args.size} calibration from the inputs ({e}); give files written "
              "by pdfast calibrate", file=sys.stderr)
        return 2
    except PdfastError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
