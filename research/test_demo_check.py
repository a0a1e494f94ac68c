"""research/demo_check.py: the commands it runs and the row it keeps, on canned CLI reports (the real run takes
minutes; the CLI's own reports are tested in tests/)."""
import demo_check as dc


def test_check_runs_invert_then_evaluate_and_keeps_the_figures(monkeypatch, tmp_path):
    calls = []

    def fake(argv):
        calls.append(argv[1:])
        if argv[1] == "invert":
            return {"metrics": {"detection": {"verdict": "backdoored"}, "trigger_miss": 0.25},
                    "selection": {"chosen": "patch-br"}}, 90.0
        return {"asr": 53 / 64, "asr_paper": 0.86, "clean_asr": 1 / 64, "l2": 5.4}, 110.0

    monkeypatch.setattr(dc, "run_json", fake)
    monkeypatch.setattr(dc, "OUT", tmp_path / "demo-check")
    row = dc.check(1)
    assert calls[0][:5] == ["invert", "--steps", "10", "--seed", "1"]
    assert calls[1][:2] == ["evaluate", "--trigger"] and calls[1][-5:] == ["-n", "64", "--seed", "0", "--json"]
    assert (row["verdict"], row["exact_hits"], row["plain_hits"], row["selection"]["chosen"]) == \
        ("backdoored", 53, 1, "patch-br")
