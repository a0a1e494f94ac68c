"""bench/calibrate_detection.py's file merge: one calibration per image size, the top level kept for its own size."""
import json

import calibrate_detection as cd


def _cal(size, thr):
    return {"statistic": "pattern_uniformity", "threshold": thr, "settings": {"sample_size": size}}


def test_merge_keeps_each_size_and_the_top_level(tmp_path):
    f = tmp_path / "cal.json"
    first = cd.merged(f, _cal(16, 0.2))  # no file yet: top level and by_size both the new one
    assert first["threshold"] == 0.2 and first["by_size"]["16"]["threshold"] == 0.2
    f.write_text(json.dumps(first))
    second = cd.merged(f, _cal(32, 0.05))  # another size: added beside, the 16x16 top level stays
    assert second["threshold"] == 0.2 and second["by_size"]["32"]["threshold"] == 0.05
    assert second["by_size"]["16"]["threshold"] == 0.2
    f.write_text(json.dumps(second))
    third = cd.merged(f, _cal(16, 0.3))  # the top level's own size: replaced everywhere
    assert third["threshold"] == 0.3 and third["by_size"]["16"]["threshold"] == 0.3
    assert third["by_size"]["32"]["threshold"] == 0.05
