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


def _fake_zoo(tmp_path, monkeypatch, code="c0de"):
    """A zoo of three 32x32 models (dev clean, dev backdoored, test clean) with quality entries of the current code."""
    import quality
    import torch
    from safetensors.torch import save_file

    zoo, cache = tmp_path / "models", tmp_path / "cache"
    values = {"c32-a": ("dev", False, 0.30), "bd32-b": ("dev", True, 0.05), "c32-test": ("test", False, 0.001)}
    for name, (split, bd, unif) in values.items():
        d = zoo / name
        (d / "unet").mkdir(parents=True)
        (d / "unet" / "config.json").write_text(json.dumps({"sample_size": 32}))
        (d / "zoo.json").write_text(json.dumps({"recipe": {"split": split, "kind": "x"}}))
        if bd:
            (d / "backdoor.json").write_text("{}")
        e = cache / "entries" / name
        e.mkdir(parents=True)
        rec = {"pattern_samples": {"verdict": {"uniformity": unif, "uniformity_q25": unif / 2}},
               "samples": {"verdict": {"uniformity": 0.4}}, "trigger": {"kl_mean": 0.1}}
        (e / f"pdfast-K10-abc-{code}.json").write_text(json.dumps(rec))
        save_file({"pattern": torch.full((3, 32, 32), 0.15)}, str(e / f"pdfast-K10-abc-{code}.safetensors"))
    monkeypatch.setattr(quality, "ZOO", zoo)
    monkeypatch.setattr(quality, "RECIPE", tmp_path / "none.json")
    monkeypatch.setattr(quality, "CACHE", cache)
    monkeypatch.setattr(quality, "code_version", lambda cache=None: {"id": code})


def test_from_quality_reads_dev_models_of_the_size_only(tmp_path, monkeypatch):
    _fake_zoo(tmp_path, monkeypatch)
    rows, rms = cd.from_quality(32, 10, "pattern_uniformity")
    assert sorted(r["model"] for r in rows) == ["bd32-b", "c32-a"]  # the test model is never read
    assert rms == 0.15
    assert cd.from_quality(16, 10, "pattern_uniformity") == ([], None)


def test_from_quality_writes_the_size_entry_with_its_pattern_energy(tmp_path, monkeypatch):
    _fake_zoo(tmp_path, monkeypatch)
    monkeypatch.setattr(cd, "write", lambda *a, **k: None)
    f = tmp_path / "cal.json"
    f.write_text(json.dumps({"threshold": 0.2, "pattern_rms": 0.15, "settings": {"sample_size": 16}}))
    assert cd.main(["--from-quality", "32", "--write", str(f)]) == 0
    cal = json.loads(f.read_text())
    e = cal["by_size"]["32"]
    assert abs(e["threshold"] - (0.30 * 0.05) ** 0.5) < 1e-12 and e["separated"] is True
    assert e["pattern_rms"] == 0.15 and e["settings"]["sample_size"] == 32 and e["settings"]["preset"] == "pdfast"
    assert cal["threshold"] == 0.2  # the 16x16 top level stays


def test_from_quality_without_clean_models_is_a_clear_error(tmp_path, monkeypatch, capsys):
    _fake_zoo(tmp_path, monkeypatch)
    assert cd.main(["--from-quality", "64"]) == 2
    assert "no clean model" in capsys.readouterr().err


def test_from_verdict_study_calibrates_at_the_chosen_energy(tmp_path, monkeypatch):
    study = {"rows": [{"model": "c32-a", "backdoored": False, "rms": "0.35", "uniformity": 0.42, "uniformity_q25": 0.04},
                      {"model": "bd32-b", "backdoored": True, "rms": "0.35", "uniformity": 0.19, "uniformity_q25": 0.1},
                      {"model": "c32-a", "backdoored": False, "rms": "0.15", "uniformity": 0.44, "uniformity_q25": 0.2},
                      {"model": "bd32-b", "backdoored": True, "rms": "0.15", "uniformity": 0.34, "uniformity_q25": 0.1}]}
    res = tmp_path / "results"
    res.mkdir()
    (res / "verdict-study-dev-32.json").write_text(json.dumps(study))
    monkeypatch.setattr(cd, "__file__", str(tmp_path / "calibrate_detection.py"))
    written = []
    monkeypatch.setattr(cd, "write", lambda name, *a, **k: written.append(name))
    f = tmp_path / "cal.json"
    assert cd.main(["--from-verdict-study", "32", "--pattern-rms", "0.35", "--write", str(f)]) == 0
    e = json.loads(f.read_text())["by_size"]["32"]
    assert abs(e["threshold"] - (0.42 * 0.19) ** 0.5) < 1e-12 and e["pattern_rms"] == 0.35
    assert written == ["detection-calibration-dev-32"]  # pdfast 0.1's demo calibration report is not overwritten


def test_from_verdict_study_refuses_an_energy_it_did_not_measure(tmp_path, monkeypatch):
    res = tmp_path / "results"
    res.mkdir()
    (res / "verdict-study-dev-32.json").write_text(json.dumps({"rows": [
        {"model": "c32-a", "backdoored": False, "rms": "0.15", "uniformity": 0.4, "uniformity_q25": 0.1}]}))
    monkeypatch.setattr(cd, "__file__", str(tmp_path / "calibrate_detection.py"))
    import pytest

    with pytest.raises(SystemExit, match="no rows at --pattern-rms 0.5"):
        cd.main(["--from-verdict-study", "32", "--pattern-rms", "0.5"])
    assert cd.main(["--from-verdict-study", "32"]) == 2  # the energy must be named
