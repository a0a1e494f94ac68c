"""research/selection_study.py: what each selection rule returns from one model's candidates."""
from pathlib import Path

import selection_study as ss


def _rec():
    fires = {"search": 0.0, "refine": 0.5, "patch-tl": 0.5, "patch-br": 0.4375, "elijah": 0.75}
    objective = {"search": {"rel": 0.001, "abs": 0.001}, "refine": {"rel": 0.03, "abs": 0.002},
                 "patch-tl": {"rel": 0.02, "abs": 0.009}, "patch-br": {"rel": 0.01, "abs": 0.004},
                 "elijah": {"rel": 0.0001, "abs": 0.5}}
    return {"fires": fires, "objective": objective}


def test_rules_pick_from_the_top_score():
    r = _rec()
    assert ss.choose(r, "first") == "refine"  # the first of the tied; Elijah is no candidate
    assert ss.choose(r, "objective") == "patch-br"  # within 1/16 of the top; the search's lower value is not
    assert ss.choose(r, "first+elijah") == "elijah"


def test_gate_rejects_are_recognised(tmp_path: Path):
    (tmp_path / "zoo.json").write_text('{"rejected": "fails the gate"}')
    assert ss.rejected(tmp_path) and not ss.rejected(None) and not ss.rejected(tmp_path / "missing")
