"""research/trojdiff_warm.py: the variants are valid inversion options, and the report lists every record (the
inversion itself is pdfast.invert, tested in tests/)."""
import json

import trojdiff_warm as tw


def test_every_variant_resolves_for_trojdiff():
    from pdfast.config import InversionConfig

    for name, stages in tw.VARIANTS.items():
        for opts in stages if isinstance(stages, list) else [stages]:
            cfg = InversionConfig.from_options(**{"polish_epochs": 0, **opts}).resolved("trojdiff")
            assert cfg.warm_epochs == 300 and cfg.polish_epochs == 0, name


def test_report_lists_every_record(tmp_path, monkeypatch):
    (tmp_path / "results").mkdir()
    records = tmp_path / "results" / "trojdiff-warm.json"
    monkeypatch.setattr(tw, "RECORDS", records)
    monkeypatch.setattr(tw, "HERE", tmp_path)
    rec = {"cpu": "cpu-x", "seed": 0, "pattern_cosine": 0.8305, "l2": 5.07, "fires": -0.125, "truth_fires": 0.9375,
           "seconds": 80.0}
    records.write_text(json.dumps({f"cpu-x-{v}-s0": {**rec, "variant": v} for v in ("constant", "then-antithetic")}))
    tw.report()
    text = (tmp_path / "results" / "trojdiff-warm.md").read_text()
    rows = [ln for ln in text.splitlines() if ln.startswith("| cpu-x")]
    assert rows == ["| cpu-x | constant | 0 | 0.831 | 5.07 | -0.12 | 0.94 | 80.0 |",
                    "| cpu-x | then-antithetic | 0 | 0.831 | 5.07 | -0.12 | 0.94 | 80.0 |"]
