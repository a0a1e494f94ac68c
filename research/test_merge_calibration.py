"""research/merge_calibration.py: rows of two calibrations placed as one (the threshold by hand), and refusals."""
import json

import merge_calibration as mc

SETTINGS = {"sample_size": 16, "steps": 10, "method": "puredif", "preset": "pdfast", "scales": "surrogate", "seed": 0}


def _entry(rows, settings=SETTINGS):
    return {"statistic": "trigger_miss", "settings": dict(settings),
            "models": [{"model": m, "label": lab, "trigger_miss": v, "kl_mean": 0.1, "pattern_rms": 0.15}
                       for m, lab, v in rows], "engine": {"name": "fast"}}


def test_two_halves_place_the_threshold_of_the_whole(tmp_path):
    a = _entry([("c1", "clean", 1.0), ("b1", "backdoored", 0.1)])
    b = _entry([("c2", "clean", 0.9), ("b2", "backdoored", 0.4)])
    for name, e in (("a.json", a), ("b.json", b)):
        (tmp_path / name).write_text(json.dumps({"by_size": {"16": e}}))
    out = tmp_path / "cal.json"
    assert mc.main([str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--size", "16", "--out", str(out),
                    "--source", "two runs"]) == 0
    e = json.loads(out.read_text())["by_size"]["16"]
    assert [r["model"] for r in e["models"]] == ["c1", "b1", "c2", "b2"]
    assert abs(e["threshold"] - (0.9 * 0.4) ** 0.5) < 1e-12       # lowest clean 0.9, highest backdoored below it 0.4
    assert "(two runs)" in e["provenance"] and e["engine"] == {"name": "fast"}


def test_refusals(tmp_path, capsys):
    a = _entry([("c1", "clean", 1.0)])
    b = _entry([("c1", "clean", 0.9)])
    c = _entry([("c3", "clean", 0.9)], {**SETTINGS, "steps": 50})
    for name, e in (("a.json", a), ("b.json", b), ("c.json", c)):
        (tmp_path / name).write_text(json.dumps({"by_size": {"16": e}}))
    args = ["--size", "16", "--out", str(tmp_path / "o.json"), "--source", "x"]
    assert mc.main([str(tmp_path / "a.json"), str(tmp_path / "b.json"), *args]) == 2
    assert "more than one input" in capsys.readouterr().err
    assert mc.main([str(tmp_path / "a.json"), str(tmp_path / "c.json"), *args]) == 2
    assert "differ in their settings" in capsys.readouterr().err
    assert mc.main([str(tmp_path / "a.json"), *args[:1], "32", *args[2:]]) == 2
    assert "cannot read a 32x32" in capsys.readouterr().err
    assert not (tmp_path / "o.json").exists()


def test_later_wins_keeps_a_remeasured_models_last_row():
    a = _entry([("m/c1", "clean", 1.0), ("m/b1", "backdoored", 0.5)])
    b = _entry([("other/b1", "backdoored", 0.1)])
    e = mc.merge([a, b], "x", later_wins=True)
    assert [(r["model"], r["trigger_miss"]) for r in e["models"]] == [("m/c1", 1.0), ("other/b1", 0.1)]
    assert abs(e["threshold"] - 0.1 ** 0.5) < 1e-12               # sqrt(1.0 * 0.1): the 0.5 row is gone
