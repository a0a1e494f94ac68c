"""research/trojdiff_seeds.py: the CPU tag and the report from records (the inversion itself is pdfast.invert,
tested in tests/)."""
import json
import re

import trojdiff_seeds as ts


def test_the_machine_tag_is_a_file_tag():
    name = ts.device_slug("cpu")
    assert name and re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", name)


def test_stage_ends_follow_the_resolved_config():
    from pdfast.config import InversionConfig

    cfg = InversionConfig(epochs=30, coarse_epochs=5).resolved("trojdiff")  # warm 300, polish 300: TrojDiff's preset
    assert ts.stage_ends(cfg) == {299: "warm", 599: "polish", 634: "search"}
    assert ts.stages_tag(cfg) == "warm300-polish300"
    cfg = InversionConfig(epochs=30, coarse_epochs=5, polish_epochs=0).resolved("trojdiff")
    assert ts.stage_ends(cfg) == {299: "warm", 334: "search"} and ts.stages_tag(cfg) == "warm300-polish0"


def test_report_reads_every_record(tmp_path, monkeypatch):
    (tmp_path / "results").mkdir()
    records = tmp_path / "results" / "trojdiff-seeds.json"
    monkeypatch.setattr(ts, "RECORDS", records)
    monkeypatch.setattr(ts, "HERE", tmp_path)
    monkeypatch.setattr(ts, "family_rows", lambda: [])
    stage = {"pattern_cosine": 0.5, "l2": 6.0, "fires": 0.125}
    records.write_text(json.dumps({f"amd-epyc-s{seed}": {
        "seed": seed, "cpu": "amd-epyc", "seconds": 400.0, "chosen": {"chosen": "search"},
        "stages": {"warm": stage, "search": stage, "returned": {**stage, "pattern_cosine": 0.94}}} for seed in (0, 1)}))
    assert sorted(ts.read_records()) == ["amd-epyc-s0", "amd-epyc-s1"]
    ts.report()
    text = (tmp_path / "results" / "trojdiff-seeds.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| amd-epyc")]
    assert len(rows) == 2 and "0.94 / 6.0 / 0.12" in rows[0] and "| search |" in rows[1]
    assert "| warm300-polish0 |" in rows[0] and "| - |" in rows[0]  # records from before the polish stage
