"""Verdict v2 (issue 22, item 3): does a statistic that credits the inverted trigger beat the one that needs no
trigger? Read from a `pdfast scan` of the zoo (every model's report.json under DIR/runs/), per statistic:

  pattern_uniformity   the shipped verdict: U(eps + the trigger's pattern), low = backdoored
  plain_uniformity     the no-trigger baseline: U(eps), plain samples from the same noises
  pattern_effect       paired: U(eps + pattern) / U(eps), about 1 when the pattern changes nothing
  trigger_effect       paired: U(eps + trigger) / U(eps)

A threshold per image size is placed on the DEV split only (pdfast.calibration.place_threshold: the geometric mean
of the lowest clean and the highest backdoored value when they separate, else half the lowest clean one), then
applied unchanged to the TEST split; AUCs on both. Splits and labels: zoo v1's recipe, zoo v2's recipe (its models
from the dev base are dev, the issue-20 family models included), backdoored = the folder has backdoor.json.

    python research/verdict_v2.py SCAN_DIR [SCAN_DIR ...]

Outputs: research/results/verdict-v2.json and verdict-v2.md.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import stats  # noqa: E402
from quality.base import git_info, write_json  # noqa: E402
from quality.tables import md_table  # noqa: E402

STATISTICS = ("pattern_uniformity", "plain_uniformity", "pattern_effect", "trigger_effect")
BASELINE = "plain_uniformity"


def splits() -> dict[str, str]:
    """Model name -> dev|test from zoo v1's and zoo v2's recipes; a v2 family model outside the recipe (issue 20's
    first ones, trained from the dev base) is dev. The recipe wins: its test family models stay test."""
    out = {}
    for recipe in (HERE / "zoo" / "recipe.json", HERE / "zoo" / "v2" / "recipe.json"):
        for m in json.loads(recipe.read_text())["models"]:
            out[m["name"]] = m["split"]
    for fam in (HERE / "zoo" / "v2" / "models").glob("v2-fam-*"):
        out.setdefault(fam.name, "dev")
    return out


def rows_from_scans(dirs: list[Path]) -> list[dict]:
    """One row per scanned model: name, size, label, split and the statistics, from its report.json."""
    split, rows = splits(), []
    for d in dirs:
        for rep in sorted((d / "runs").glob("*/report.json")):
            r = json.loads(rep.read_text())
            src = Path(r.get("model", {}).get("source") or r.get("model_source") or "")
            name = src.name
            m = r["metrics"]
            if name not in split or any(m.get(s) is None for s in STATISTICS):
                continue
            size = json.loads((src / "unet" / "config.json").read_text())["sample_size"]
            rows.append({"name": name, "split": split[name], "size": size,
                         "label": "backdoored" if (src / "backdoor.json").is_file() else "clean",
                         **{s: m[s] for s in STATISTICS}})
    return rows


def evaluate(rows: list[dict], stat: str, size) -> dict:
    """Dev threshold for ``stat`` at image ``size``, dev and test TPR/TNR/AUC (low = backdoored)."""
    from pdfast.calibration import place_threshold

    part = {sp: [r for r in rows if r["split"] == sp and r["size"] == size] for sp in ("dev", "test")}
    dev_c = [r[stat] for r in part["dev"] if r["label"] == "clean"]
    dev_b = [r[stat] for r in part["dev"] if r["label"] == "backdoored"]
    if not dev_c:
        return {}
    thr, separated = place_threshold(dev_c, dev_b)
    out = {"threshold": thr, "dev_separated": separated}
    for sp, rs in part.items():
        bad = [r[stat] for r in rs if r["label"] == "backdoored"]
        clean = [r[stat] for r in rs if r["label"] == "clean"]
        out[sp] = {"tpr": stats.rate(sum(v < thr for v in bad), len(bad)),
                   "tnr": stats.rate(sum(v >= thr for v in clean), len(clean)),
                   "auc": stats.auc([-v for v in bad], [-v for v in clean]) if bad and clean else None}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scans", nargs="+", type=Path)
    args = ap.parse_args(argv)
    rows = rows_from_scans(args.scans)
    sizes = sorted({r["size"] for r in rows})
    res = {f"{stat}@{size}": evaluate(rows, stat, size) for stat in STATISTICS for size in sizes}
    write_json(HERE / "results" / "verdict-v2.json", {"git": git_info(), "scans": [str(s) for s in args.scans],
                                                      "rows": rows, "results": res})
    f, table = stats.fmt_rate, []
    for key, r in res.items():
        if not r:
            continue
        auc = lambda sp: "-" if r[sp]["auc"] is None else f"{r[sp]['auc']:.2f}"  # noqa: E731
        table.append([key + (" (no trigger)" if key.startswith(BASELINE) else ""), f"{r['threshold']:.4g}",
                      str(r["dev_separated"]), f(r["dev"]["tpr"]), f(r["dev"]["tnr"]), auc("dev"),
                      f(r["test"]["tpr"]), f(r["test"]["tnr"]), auc("test")])
    models = md_table([[r["name"], r["split"], r["size"], r["label"], *(f"{r[s]:.4f}" for s in STATISTICS)]
                       for r in sorted(rows, key=lambda r: (r["split"], r["size"], r["label"], r["name"]))],
                      ["model", "split", "size", "label", *STATISTICS])
    text = ("# Verdict v2: statistics that credit the trigger against the one that needs none\n\n"
            f"Written by `python research/verdict_v2.py {' '.join(map(str, args.scans))}`. Thresholds placed on dev "
            "only, applied unchanged to test (low = backdoored); 95% Wilson intervals.\n\n"
            + md_table(table, ["statistic@size", "dev threshold", "dev separated", "dev TPR", "dev TNR", "dev AUC",
                               "test TPR", "test TNR", "test AUC"]) + "\n\n## Every model\n\n" + models + "\n")
    (HERE / "results" / "verdict-v2.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
