"""research/heldout_dev.py on the micro zoo: the shipped CLI is run for real on an untrained 8x8 backdoored model and
a clean one (tiny settings through --methods elijah only, the cheaper method), the rows and the table come out, and a
second run reads the records back instead of re-running."""
import json

import pytest

import heldout_dev as hd


def test_heldout_dev_runs_and_resumes(micro_zoo, tmp_path, monkeypatch):
    zoo = micro_zoo / "models"
    out = tmp_path / "heldout"
    calls = []
    real = hd.run_json

    def counting(argv):
        calls.append(argv[1])
        return real(argv + (["--epochs", "2", "--eval-steps", "5", "--n-eval", "4"] if argv[1] == "detect" else []))

    monkeypatch.setattr(hd, "run_json", counting)
    assert hd.main([str(zoo / "bd8"), str(zoo / "c8"), "--methods", "elijah", "--out", str(out)]) == 0
    assert calls == ["detect", "evaluate", "detect"]          # a clean model has no target to evaluate against
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert [(r["model"], r["label"]) for r in rows] == [("bd8", "backdoored"), ("c8", "clean")]
    assert rows[0]["exact_asr"] is not None and rows[1]["exact_asr"] is None
    assert rows[0]["verdict"] in ("clean", "backdoored")
    assert "| bd8 | backdoored | elijah |" in out.with_suffix(".md").read_text()
    assert hd.main([str(zoo / "bd8"), "--methods", "elijah", "--out", str(out)]) == 0
    assert calls == ["detect", "evaluate", "detect"]          # read back, not re-run


def test_a_folder_without_zoo_json_is_refused_before_any_run(tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        hd.main([str(tmp_path), "--out", str(tmp_path / "o")])
    assert err.value.code == 2 and "no zoo.json" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
