"""The verdict beside the statistics that need no trigger, on a calibration file's own rows (issue 22, item 3).

For one image size of a calibration file written by `pdfast calibrate` (default: the shipped one, 16x16), the ROC AUC
(research/stats.auc, low = backdoored for every statistic) of

  trigger_miss         verdict v2: 1 - (hits(trigger) - max(hits(plain), hits(flat))), docs/method.md 7
  pattern_uniformity   verdict v1: uniformity of eps + the trigger's pattern
  plain_uniformity     no trigger at all: uniformity of plain samples from the same noises

and each row's values. These are the rows the threshold was placed on (dev models), not a held-out test.

    python research/calibration_auc.py [--calibration FILE] [--size 16]

Outputs research/results/calibration-auc-<size>.md (and .json).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import stats  # noqa: E402
from quality.base import write_json  # noqa: E402
from quality.tables import f4, md_table  # noqa: E402

STATISTICS = ("trigger_miss", "pattern_uniformity", "plain_uniformity")


def aucs(rows: list[dict]) -> dict:
    """statistic -> AUC over the rows (backdoored = positive; low values mean backdoored, so they are negated)."""
    out = {}
    for s in STATISTICS:
        pos = [-r[s] for r in rows if r["label"] == "backdoored" and r.get(s) is not None]
        neg = [-r[s] for r in rows if r["label"] == "clean" and r.get(s) is not None]
        out[s] = stats.auc(pos, neg)
    return out


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calibration", default=str(HERE.parent / "pdfast" / "detection_calibration.json"))
    ap.add_argument("--size", default="16")
    args = ap.parse_args(argv)
    entry = json.loads(Path(args.calibration).read_text())["by_size"][args.size]
    rows = entry["models"]
    result = {"calibration": args.calibration, "size": args.size, "threshold": entry["threshold"],
              "statistic": entry["statistic"], "n_clean": sum(r["label"] == "clean" for r in rows),
              "n_backdoored": sum(r["label"] == "backdoored" for r in rows), "auc": aucs(rows)}
    out = HERE / "results" / f"calibration-auc-{args.size}"
    write_json(out.with_suffix(".json"), {**result, "rows": [{k: r.get(k) for k in ("model", "label", *STATISTICS)}
                                                             for r in rows]})
    table = md_table([[Path(r["model"]).name, r["label"], *[f4(r.get(s)) for s in STATISTICS]] for r in rows],
                     ["model", "label", *STATISTICS])
    out.with_suffix(".md").write_text(
        f"# Verdict and no-trigger statistics on the {args.size}x{args.size} calibration rows\n\nWritten by `python "
        f"research/calibration_auc.py {' '.join(argv)}` from {Path(args.calibration).name} ({result['n_clean']} clean, "
        f"{result['n_backdoored']} backdoored; threshold {entry['statistic']} {entry['threshold']:.3f}). These are the "
        "calibration's own (dev) models.\n\nAUC (low = backdoored): " +
        ", ".join(f"{s} {f4(a)}" for s, a in result["auc"].items()) + "\n\n" + table + "\n")
    print(json.dumps(result["auc"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
