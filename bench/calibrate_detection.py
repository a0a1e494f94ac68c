"""Calibrate the detection threshold on clean models (docs/method.md section 7) and write it where pdfast reads it.

For every model: invert with the default settings (PureDiffusion, K = --steps, surrogate scales), sample 16
images from eps + trigger and 16 from eps + its pattern (pdfast.metrics.trigger_pattern), record both
uniformities and TERD's KL mean. The verdict statistic is the pattern's uniformity; its threshold sits between
the clean models and the backdoored ones (geometric mean of the lowest clean and the highest backdoored value);
with no backdoored models given, half of the lowest clean value. Same method, size and settings as detection.

  python bench/calibrate_detection.py --clean build/clean-s0 build/clean-s1 --backdoored pdfast/demo/model \
      --write pdfast/detection_calibration.json
  python bench/calibrate_detection.py --verify build/clean-s2 build/clean-s3 pdfast/demo/model
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from common import header, md_table, write


def measure(path: str, steps: int, seed: int, device: str) -> dict:
    import pdfast

    model = pdfast.load_model(path, device=device)
    res = pdfast.invert(model, steps=steps, seed=seed, device=device)
    m = res.metrics
    return {"model": path, "sample_size": model.sample_size, "pattern_uniformity": m["pattern_uniformity"],
            "pattern_uniformity_q25": m["pattern_uniformity_q25"], "uniformity": m["uniformity"],
            "uniformity_trimmed": m["uniformity_trimmed"], "kl_mean": m["kl_mean"], "asr": m.get("asr"),
            "pattern_asr": m.get("pattern_asr"), "l2": m.get("l2"), "pattern_l2": m.get("pattern_l2"),
            "verdict": m["detection"]["verdict"], "statistic": m["detection"]["statistic"],
            "threshold_used": m["detection"]["threshold"], "seconds": res.timings["total_seconds"]}


def _settings(rows: list[dict], a) -> dict:
    """What a run must share with this calibration for its threshold to apply (pdfast.detection checks and warns):
    method, K, seed and, when every model has the same one, the image size."""
    sizes = {r["sample_size"] for r in rows}
    return {"method": "puredif", "steps": a.steps, "seed": a.seed,
            **({"sample_size": sizes.pop()} if len(sizes) == 1 else {})}


def merged(path: Path, cal: dict) -> dict:
    """The calibration file with ``cal`` for its image size: kept under "by_size" beside the other sizes'
    (pdfast.detection.calibration picks the run's size), and at the top level too when the file had none or the
    top level was for the same size."""
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        old = {}
    size = cal["settings"].get("sample_size")
    by_size = dict(old.get("by_size") or {})
    if size is not None:
        by_size[str(size)] = cal
    top_size = (old.get("settings") or {}).get("sample_size")
    top = cal if not old or top_size in (None, size) else {k: v for k, v in old.items() if k != "by_size"}
    return {**top, "by_size": by_size}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clean", nargs="*", default=[], help="clean model folders to calibrate on")
    ap.add_argument("--backdoored", nargs="*", default=[], help="backdoored model folders to calibrate on")
    ap.add_argument("--verify", nargs="*", default=[], help="models to run detection on with the current threshold")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--write", default=None, help="write the calibration JSON here (pdfast/detection_calibration.json)")
    ap.add_argument("--name", default="detection-calibration")
    ap.add_argument("--statistic", default="pattern_uniformity", choices=("pattern_uniformity", "pattern_uniformity_q25"),
                    help="the verdict's statistic (low = backdoored); chosen by the dev evidence (docs/results.md)")
    a = ap.parse_args(argv)
    cmd = "python bench/calibrate_detection.py " + " ".join(argv or sys.argv[1:])

    if a.verify:
        rows = [measure(p, a.steps, a.seed, a.device) for p in a.verify]
        table = md_table(rows, ["model", "verdict", "statistic", "pattern_uniformity", "threshold_used", "uniformity",
                                "kl_mean", "asr", "pattern_asr", "l2", "seconds"])
        write(a.name + "-verify", {**header(), "command": cmd, "rows": rows}, table)
        print(table)
        return 0

    clean = [dict(measure(p, a.steps, a.seed, a.device), label="clean") for p in a.clean]
    bad = [dict(measure(p, a.steps, a.seed, a.device), label="backdoored") for p in a.backdoored]
    if not clean:
        print("error: give at least one --clean model", file=sys.stderr)
        return 2
    stat = a.statistic
    lo_clean = min(r[stat] for r in clean)
    if bad:
        hi_bad = max(r[stat] for r in bad)
        separated = hi_bad < lo_clean
        thr = math.sqrt(lo_clean * hi_bad) if separated and hi_bad > 0 else lo_clean / 2
    else:
        separated, thr = None, lo_clean / 2
    kl_clean = max(r["kl_mean"] for r in clean)
    kl_bad = min((r["kl_mean"] for r in bad), default=None)
    kl_thr = (kl_clean + kl_bad) / 2 if kl_bad is not None and kl_bad > kl_clean else None
    cal = {"statistic": stat, "threshold": thr, "kl_threshold": kl_thr,
           "provenance": f"calibrated on {len(clean)} clean and {len(bad)} backdoored models, K={a.steps}, "
                         f"PureDiffusion defaults ({cmd})",
           "separated": separated, "settings": _settings(clean + bad, a),
           "models": clean + bad, **header()}
    if a.write:
        Path(a.write).write_text(json.dumps(merged(Path(a.write), cal), indent=2, default=str) + "\n")
    table = md_table(clean + bad, ["label", "model", "pattern_uniformity", "pattern_uniformity_q25", "uniformity", "uniformity_trimmed",
                                   "kl_mean", "asr", "pattern_asr", "l2", "pattern_l2", "seconds"])
    table += f"\n\nthreshold ({stat}) = {thr:.4g}; KL threshold = {kl_thr}; separated = {separated}\n"
    write(a.name, {**cal, "command": cmd}, table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
