"""Calibrate the detection threshold on clean models (docs/method.md section 7) and write it where pdfast reads it.

For every model: invert with the default settings (PureDiffusion, K = --steps, surrogate scales), sample 16
images from eps + trigger and 16 from eps + its pattern (pdfast.metrics.trigger_pattern), record both
uniformities and TERD's KL mean. The verdict statistic is the pattern's uniformity; its threshold sits between
the clean models and the backdoored ones (geometric mean of the lowest clean and the highest backdoored value);
with no backdoored models given, half of the lowest clean value. Same method, size and settings as detection.

  python bench/calibrate_detection.py --clean build/clean-s0 build/clean-s1 --backdoored pdfast/demo/model \
      --write pdfast/detection_calibration.json
  python bench/calibrate_detection.py --verify build/clean-s2 build/clean-s3 pdfast/demo/model
  python bench/calibrate_detection.py --from-quality 32 --write pdfast/detection_calibration.json
  python bench/calibrate_detection.py --from-verdict-study 32 --pattern-rms 0.35 --write pdfast/detection_calibration.json

--from-quality SIZE reads the verdict statistics of the zoo's DEV models of that image size from
bench/quality.py's cache (pdfast's defaults at --steps, current code version; the first 16 pattern samples with
seed 0 are exactly the verdict's) instead of inverting again, and records the pattern energy they were sampled at.
Test models are never read. --from-verdict-study SIZE takes them from bench/verdict_study.py --size SIZE
(bench/results/verdict-study-dev-SIZE.json) at the pattern energy --pattern-rms, for an energy the quality run did
not sample at.
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


def from_quality(size: int, steps: int, statistic: str) -> tuple[list[dict], float | None]:
    """(rows, pattern rms) of the dev models of image size ``size`` that have a current-code pdfast entry at K =
    ``steps`` in bench/quality.py's cache; the rms is the one their verdict patterns were sampled at (one for all)."""
    import quality
    from safetensors.torch import load_file

    code = quality.code_version()["id"]
    rows, rms = [], set()
    for m in quality.scan_zoo(quality.ZOO, quality.RECIPE):
        if m.split != "dev" or quality.sample_size(m) != size:
            continue
        hits = sorted((quality.CACHE / "entries" / m.name).glob(f"pdfast-K{steps}-*-{code}.json"))
        if not hits:
            continue
        rec = json.loads(hits[-1].read_text())
        verdict = rec["pattern_samples"]["verdict"]
        pattern = load_file(str(hits[-1].with_suffix(".safetensors")))["pattern"]
        rms.add(round(float(pattern.pow(2).mean().sqrt()), 4))
        rows.append({"model": m.name, "label": "backdoored" if m.backdoored else "clean", "sample_size": size,
                     "pattern_uniformity": verdict["uniformity"], "pattern_uniformity_q25": verdict["uniformity_q25"],
                     "uniformity": rec["samples"]["verdict"]["uniformity"], "kl_mean": rec["trigger"]["kl_mean"],
                     "entry": str(hits[-1].relative_to(quality.CACHE)), "code_version": code})
    if len(rms) > 1:
        raise SystemExit(f"error: the {size}x{size} entries sampled their patterns at different energies {sorted(rms)}; "
                         "re-run bench/quality.py for them under one calibration")
    return rows, (rms.pop() if rms else None)


def from_verdict_study(size: int, rms: str) -> list[dict]:
    """Rows of bench/verdict_study.py --size ``size`` at pattern energy ``rms`` (its dev models only)."""
    f = Path(__file__).resolve().parent / "results" / f"verdict-study-dev-{size}.json"
    try:
        study = json.loads(f.read_text())
    except (OSError, ValueError):
        raise SystemExit(f"error: no verdict study for {size}x{size} at {f}; run "
                         f"python bench/verdict_study.py --size {size} first") from None
    rows = [{"model": r["model"], "label": "backdoored" if r["backdoored"] else "clean", "sample_size": size,
             "pattern_uniformity": r["uniformity"], "pattern_uniformity_q25": r["uniformity_q25"],
             "source": f.name} for r in study["rows"] if str(r["rms"]) == rms]
    if not rows:
        have = sorted({str(r["rms"]) for r in study["rows"]})
        raise SystemExit(f"error: the {size}x{size} verdict study has no rows at --pattern-rms {rms}; it has {have}")
    return rows


def _settings(rows: list[dict], a) -> dict:
    """What a run must share with this calibration for its threshold to apply (pdfast.detection checks and warns):
    method, preset, K, seed and, when every model has the same one, the image size."""
    sizes = {r["sample_size"] for r in rows}
    return {"method": "puredif", "steps": a.steps, "seed": a.seed, "preset": "pdfast",
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
    ap.add_argument("--from-quality", type=int, default=None, metavar="SIZE",
                    help="take the dev models of this image size from bench/quality.py's cache instead of inverting")
    ap.add_argument("--from-verdict-study", type=int, default=None, metavar="SIZE",
                    help="take the dev models of this image size from bench/verdict_study.py --size SIZE")
    ap.add_argument("--pattern-rms", default=None, help="with --from-verdict-study: the pattern energy to calibrate at")
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

    pattern_rms = None
    dev_size = a.from_verdict_study if a.from_verdict_study is not None else a.from_quality
    if dev_size is not None:
        if a.from_verdict_study is not None:
            if a.pattern_rms is None:
                print("error: --from-verdict-study needs --pattern-rms (one of the study's energies)", file=sys.stderr)
                return 2
            rows = from_verdict_study(dev_size, a.pattern_rms)
            pattern_rms = None if a.pattern_rms == "keep" else float(a.pattern_rms)
        else:
            rows, pattern_rms = from_quality(dev_size, a.steps, a.statistic)
        clean = [r for r in rows if r["label"] == "clean"]
        bad = [r for r in rows if r["label"] == "backdoored"]
        if a.name == "detection-calibration":  # pdfast 0.1's demo calibration keeps its file
            a.name = f"detection-calibration-dev-{dev_size}"
    else:
        from pdfast.detection import calibration

        clean = [dict(measure(p, a.steps, a.seed, a.device), label="clean") for p in a.clean]
        bad = [dict(measure(p, a.steps, a.seed, a.device), label="backdoored") for p in a.backdoored]
        sizes = {r["sample_size"] for r in clean + bad}
        if len(sizes) == 1:  # the energy the verdict sampled these patterns at (pdfast.detection.verdict_pattern)
            pattern_rms = calibration(sample_size=next(iter(sizes))).get("pattern_rms")
    if not clean:
        print("error: no clean model to calibrate on: give --clean models, or run bench/quality.py on the dev "
              "models of that size first", file=sys.stderr)
        return 2
    stat = a.statistic
    lo_clean = min(r[stat] for r in clean)
    if bad:
        hi_bad = max(r[stat] for r in bad)
        separated = hi_bad < lo_clean
        thr = math.sqrt(lo_clean * hi_bad) if separated and hi_bad > 0 else lo_clean / 2
    else:
        separated, thr = None, lo_clean / 2
    kl_clean = max((r["kl_mean"] for r in clean if r.get("kl_mean") is not None), default=None)
    kl_bad = min((r["kl_mean"] for r in bad if r.get("kl_mean") is not None), default=None)
    kl_thr = (kl_clean + kl_bad) / 2 if None not in (kl_clean, kl_bad) and kl_bad > kl_clean else None
    source = (f"the zoo's dev {dev_size}x{dev_size} models ({len(clean)} clean, {len(bad)} backdoored)"
              if dev_size is not None else f"{len(clean)} clean and {len(bad)} backdoored models")
    cal = {"statistic": stat, "threshold": thr, "pattern_rms": pattern_rms, "kl_threshold": kl_thr,
           "provenance": f"calibrated on {source}, K={a.steps}, "
                         f"PureDiffusion defaults (preset pdfast){' with the pattern at rms %g' % pattern_rms if pattern_rms else ''}; "
                         "threshold = geometric mean of the highest backdoored and lowest clean value "
                         f"({cmd})",
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
