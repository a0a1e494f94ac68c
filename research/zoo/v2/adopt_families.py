"""Adopt issue 20's dev attack-family models (built by research/zoo/v2/families.sh, not by build.py) into zoo v2's
dev split: a zoo.json per model like the one research/zoo/build.py writes, so the zoo's scripts (research/zoo_report.py
--split dev) see them. The firing is research/results/families.json's (python research/families.py): exact ASR of the
model's own trigger, plain noise, g's flat part and a -0.5 frame over the same 64 noises (seed 0) and the family's own
sampler, which are the noises and the sampler the zoo gate draws; it is judged by the recipe's strength rule
(build.strength_check), and a model that fails it is marked rejected, with the reason, so that the zoo leaves it out.

    python research/zoo/v2/adopt_families.py            # writes research/zoo/v2/models/v2-fam-*/zoo.json
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
sys.path.insert(0, str(HERE.parent))

from build import strength_check  # noqa: E402

FAMILIES_JSON = ROOT / "research" / "results" / "families.json"


def ground_truth(asr: dict, n: int, seed: int) -> dict:
    """families.json's firing block as the gate's ground_truth record (exact rates, MSE < 0.02)."""
    rate = {k: v["exact"]["rate"] for k, v in asr.items()}
    return {"n": n, "seed": seed, "asr": rate["truth"], "asr_threshold": 0.02, "clean_asr": rate["plain"],
            "flat_asr": rate["flat-g"], "frame_asr": {"-0.5": rate["frame-0.5"]},
            "uniformity": asr["truth"]["uniformity"], "clean_uniformity": asr["plain"]["uniformity"],
            "source": "research/results/families.json (python research/families.py)"}


def zoo_record(entry: dict, folder: Path, rule: dict, n: int, seed: int) -> dict:
    """The zoo.json of one adopted model: its recipe (from backdoor.json and the command in train.txt), its ground
    truth, the strength verdict, and "rejected" when the rule fails."""
    bd = json.loads((folder / "backdoor.json").read_text())
    command = (folder / "train.txt").read_text().splitlines()[0].strip('"')
    recipe = {"name": folder.name, "split": "dev", "kind": bd["attack"], "base": Path(bd["base_model"]).name,
              "data": bd["data"], "trigger": bd["trigger"], "target": bd["target"],
              "poison_rate": bd["poison_rate"], "steps": bd["steps"], "seed": bd["seed"], "batch": bd["batch"],
              "lr": bd["lr"], "gate": True, "family": bd.get("family"), "blank_rate": bd.get("blank_rate"),
              "flat_negative_rate": bd.get("flat_negative_rate"), "flat_negative_form": bd.get("flat_negative_form"),
              "built_by": "research/zoo/v2/families.sh", "command": command, "note": entry["what"]}
    gt = ground_truth(entry["asr"], n, seed)
    passed, why = strength_check(gt, rule)
    rec = {"recipe": recipe, "ground_truth": gt, "parameters": entry.get("parameters"),
           "strength": {"rule": rule, "passed": passed, "attempts": [{"steps": bd["steps"], "seed": bd["seed"],
                                                                       "ground_truth": gt, "passed": passed,
                                                                       "why": why}]}}
    if not passed:
        rec["rejected"] = f"fails zoo v2's gate: {why}"
    return rec


def main(argv=None) -> int:
    fam = json.loads(FAMILIES_JSON.read_text())
    rule = json.loads((HERE / "recipe.json").read_text())["strength_rule"]
    for entry in fam["models"]:
        folder = ROOT / entry["folder"]
        if "asr" not in entry or not (folder / "backdoor.json").exists():
            continue                                    # the clean base is a recipe model already
        rec = zoo_record(entry, folder, rule, fam["n"], fam["seed"])
        (folder / "zoo.json").write_text(json.dumps(rec, indent=1) + "\n")
        print(f"{folder.name}: {'kept' if rec['strength']['passed'] else 'rejected'} "
              f"({rec['strength']['attempts'][0]['why']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
