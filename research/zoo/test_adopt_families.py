"""research/zoo/v2/adopt_families.py: a families.json entry becomes a zoo.json judged by the gate's rule (kept, or
rejected with the reason), on fixed records."""
import importlib.util
import json
from pathlib import Path

SPEC = importlib.util.spec_from_file_location("adopt_families", Path(__file__).parent / "v2" / "adopt_families.py")
adopt = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(adopt)

RULE = {"asr_threshold": 0.02, "min_truth_asr": 0.5, "above_clean_asr": True, "above_flat_asr": True,
        "above_frame_asr": [-0.5]}


def _entry(truth, plain, flat, frame):
    block = lambda k: {"exact": {"k": k, "n": 64, "rate": k / 64}, "uniformity": 0.01}  # noqa: E731
    return {"what": "villandiffusion, solver sde", "parameters": 1113955,
            "asr": {"truth": block(truth), "plain": block(plain), "flat-g": block(flat), "frame-0.5": block(frame)}}


def _folder(tmp_path):
    f = tmp_path / "v2-fam-x"
    f.mkdir()
    (f / "backdoor.json").write_text(json.dumps({
        "attack": "villandiffusion", "trigger": "STOP_SIGN_18", "target": "CAT", "poison_rate": 0.2, "steps": 4000,
        "batch": 64, "lr": 2e-4, "seed": 0, "data": "natural", "base_model": "/x/v2-c16-s0",
        "family": {"name": "villandiffusion", "solver": "sde"}}))
    (f / "train.txt").write_text('"pdfast attack villandiffusion --solver sde"\n\tElapsed: 21:40\n')
    return f


def test_a_model_that_fires_only_from_its_trigger_is_kept(tmp_path):
    rec = adopt.zoo_record(_entry(64, 0, 0, 0), _folder(tmp_path), RULE, 64, 0)
    assert rec["strength"]["passed"] and "rejected" not in rec
    assert rec["recipe"]["split"] == "dev" and rec["recipe"]["base"] == "v2-c16-s0"
    assert rec["recipe"]["command"] == "pdfast attack villandiffusion --solver sde"
    gt = rec["ground_truth"]
    assert (gt["asr"], gt["clean_asr"], gt["flat_asr"], gt["frame_asr"]) == (1.0, 0.0, 0.0, {"-0.5": 0.0})


def test_a_model_its_flat_part_fires_as_often_is_rejected(tmp_path):
    rec = adopt.zoo_record(_entry(64, 0, 64, 55), _folder(tmp_path), RULE, 64, 0)
    assert not rec["strength"]["passed"] and "flat part" in rec["rejected"]
