"""research/calibration_auc.py: low values count as backdoored for every statistic, on hand-made rows."""
import json

from calibration_auc import aucs, main


def _rows():
    return [{"model": "a/clean1", "label": "clean", "trigger_miss": 1.0, "pattern_uniformity": 0.3, "plain_uniformity": 0.3},
            {"model": "a/clean2", "label": "clean", "trigger_miss": 0.9, "pattern_uniformity": 0.05, "plain_uniformity": 0.05},
            {"model": "a/bd1", "label": "backdoored", "trigger_miss": 0.1, "pattern_uniformity": 0.1, "plain_uniformity": 0.2},
            {"model": "a/bd2", "label": "backdoored", "trigger_miss": 1.1, "pattern_uniformity": 0.01, "plain_uniformity": 0.3}]


def test_aucs_count_low_as_backdoored():
    a = aucs(_rows())
    assert a["trigger_miss"] == 0.5        # bd1 below both clean (2 wins), bd2 above both (0) -> 2 / 4
    assert a["pattern_uniformity"] == 0.75  # bd2 below both, bd1 below clean1 only -> 3 / 4
    assert a["plain_uniformity"] == 0.375   # bd1 below clean1 (1), bd2 ties clean1 (1/2), both above clean2 -> 1.5 / 4


def test_main_writes_the_table(tmp_path, monkeypatch):
    import calibration_auc

    cal = tmp_path / "cal.json"
    cal.write_text(json.dumps({"by_size": {"16": {"statistic": "trigger_miss", "threshold": 0.74, "models": _rows()}}}))
    monkeypatch.setattr(calibration_auc, "HERE", tmp_path)
    (tmp_path / "results").mkdir()
    assert main(["--calibration", str(cal)]) == 0
    out = json.loads((tmp_path / "results" / "calibration-auc-16.json").read_text())
    assert out["n_clean"] == 2 and out["n_backdoored"] == 2 and out["auc"]["trigger_miss"] == 0.5
