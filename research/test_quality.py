"""research/quality end to end on a micro zoo (8x8 tiny UNets, a 20-step schedule, smoke-sized inversions), and its
fidelity measures on hand-made triggers."""
import contextlib
import io
import json

import pytest
import torch

import stats
from quality import cache, cli, codeversion, planner, scoring, tables, zoo


def _args(root, *extra):
    return ["--zoo", str(root / "models"), "--out", str(root / "out"), "--smoke", "--n-samples", "4", "--ks", "2",
            "--threads", "1", *extra]


@pytest.fixture(scope="module")
def smoke_run(micro_zoo):
    """One smoke run of the scorer on the micro zoo (dev split): (zoo root, the run's quality.json, its log)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert cli.main(_args(micro_zoo)) == 0
    return micro_zoo, json.loads((micro_zoo / "out" / "quality.json").read_text()), err.getvalue()


def _entries(rep):
    return {(x["model"], x["method"], x["k"]): x for x in rep["entries"]}


def test_smoke_run_plans_the_dev_units_and_writes_the_outputs(smoke_run):
    root, rep, err = smoke_run
    assert "2 models (dev), 15 units, 15 to run" in err           # the test-split model is not run
    for f in ("results.md", "quality.json", "quality-triggers.png"):
        assert (root / "out" / f).is_file(), f
    want = {(m, meth, 2) for m in ("c8", "bd8") for meth in ("pdfast", "paper")}
    want |= {(m, "elijah", None) for m in ("c8", "bd8")} | {("bd8", "truth", None)}
    want |= {(m, f"trivial:{t}", None) for m in ("c8", "bd8") for t in planner.TRIVIAL}
    assert set(_entries(rep)) == want
    assert not any(x["stale"] for x in rep["entries"])
    assert rep["coverage"]["test"]["done"] == 0 and rep["coverage"]["dev"]["done"] == 15
    md = (root / "out" / "results.md").read_text()
    assert "## Split: dev" in md and "## Split: test" in md and "SMOKE" in md and "#### bd8" in md


def test_smoke_run_entries_measure_fidelity_asr_and_timings(smoke_run):
    e = _entries(smoke_run[1])
    truth = e["bd8", "truth", None]["trigger"]
    assert truth["l2"] == 0.0 and truth["footprint_l2"] == 0.0 and truth["pattern_cos"] == pytest.approx(1.0)
    flat = e["bd8", "trivial:flat-1", None]["trigger"]
    assert flat["pattern_cos"] == 0.0 and flat["footprint_l2"] == pytest.approx(flat["l2"])
    # ASR with its count and Wilson interval over n = 4; a clean model has no target
    asr = e["bd8", "pdfast", 2]["samples"]["all"]["asr"]
    assert asr["n"] == 4 and 0 <= asr["k"] <= 4 and len(asr["ci95"]) == 2
    assert "asr" not in e["c8", "pdfast", 2]["samples"]["all"]
    # the energy the verdict's pattern was scaled to is recorded (the calibration's for the model's size)
    from pdfast.detection import calibration

    assert e["bd8", "pdfast", 2]["verdict_pattern_rms"] == calibration(sample_size=8).get("pattern_rms")
    # a flat trigger's pattern is the zero trigger: the same samples as the all-0 baseline
    zeros = e["bd8", "trivial:zeros", None]["samples"]["all"]["uniformity"]
    assert e["bd8", "trivial:flat-1", None]["pattern_samples"]["all"]["uniformity"] == zeros
    # inversions carry their timings and the resolved options of their method
    inv = e["bd8", "paper", 2]
    assert inv["timing"]["inversion_seconds"] > 0
    assert inv["inversion"]["config"]["noise"] == "fresh" and inv["inversion"]["config"]["objective"] == "absolute"
    assert inv["inversion"]["config"]["refine_epochs"] == 0
    assert e["bd8", "pdfast", 2]["inversion"]["config"]["noise"] == "antithetic"


def test_smoke_run_verdict_statistics_are_pdfasts_own(smoke_run):
    """The '(verdict)' statistics are exactly what pdfast's own verdict computes for that trigger."""
    import pdfast
    from safetensors.torch import load_file

    root, rep, _ = smoke_run
    ent = _entries(rep)["bd8", "pdfast", 2]
    trig = load_file(str((root / "out" / "quality" / ent["file"]).with_suffix(".safetensors")))["trigger"]
    det = pdfast.detect(str(root / "models" / "bd8"), trigger=trig, n_eval=4)
    m = det.inversion.metrics
    assert m["pattern_uniformity"] == pytest.approx(ent["pattern_samples"]["verdict"]["uniformity"], rel=1e-6)
    assert m["uniformity"] == pytest.approx(ent["samples"]["verdict"]["uniformity"], rel=1e-6)
    assert m["kl_mean"] == pytest.approx(ent["trigger"]["kl_mean"], rel=1e-9)


def test_smoke_run_detection_scores_the_dev_split_only(smoke_run):
    rep = smoke_run[1]
    d = rep["detection"]["dev"]["pdfast-K2"]
    s = d["auc"]["pattern_uniformity (verdict)"]
    assert s["n_backdoored"] == 1 and s["n_clean"] == 1
    rows = {r["model"]: r["pattern_uniformity (verdict)"] for r in d["models"]}
    assert s["auc"] == stats.auc([-rows["bd8"]], [-rows["c8"]])
    # the shipped statistic is verdict v2's trigger_miss, which this (zoo v1) scorer does not measure: no rates at
    # the shipped threshold here (research/zoo_report.py scores verdict v2 through the CLI)
    from pdfast.detection import calibration

    assert calibration(sample_size=8)["statistic"] == "trigger_miss" and d["shipped_threshold"] is None
    assert rep["detection"]["test"] == {}


def test_smoke_run_resumes_redoing_only_a_lost_unit(smoke_run, capsys):
    root, out = smoke_run[0], smoke_run[0] / "out"
    files = sorted((out / "quality" / "entries").rglob("*.json"))
    before = {f: f.stat().st_mtime_ns for f in files}
    assert cli.main(_args(root)) == 0
    assert "15 units, 0 to run" in capsys.readouterr().err
    assert {f: f.stat().st_mtime_ns for f in files} == before
    lost = next(f for f in files if "paper-K2" in f.name and f.parent.name == "c8")
    lost.unlink()
    assert cli.main(_args(root, "--dry-run")) == 0
    cap = capsys.readouterr()
    assert "15 units planned, 14 cached, 1 to run" in cap.out and "paper-K2" in cap.out
    assert cli.main(_args(root)) == 0
    assert "15 units, 1 to run" in capsys.readouterr().err
    assert lost.is_file()
    assert all(f.stat().st_mtime_ns == t for f, t in before.items() if f != lost)
    # --report-only regenerates the outputs from the cache alone
    (out / "results.md").unlink()
    assert cli.main(_args(root, "--report-only")) == 0
    assert (out / "results.md").is_file()


def test_smoke_refuses_the_repository_outputs(micro_zoo):
    assert cli.main(["--zoo", str(micro_zoo / "models"), "--smoke", "--dry-run"]) == 2


def test_failed_inversion_is_recorded_and_a_held_unit_skipped(micro_zoo, capsys, monkeypatch):
    import pdfast

    root = micro_zoo
    args = ["--zoo", str(root / "models"), "--out", str(root / "out-fail"), "--smoke", "--n-samples", "4",
            "--methods", "elijah", "--threads", "1"]

    def diverged(*a, **k):
        raise pdfast.PdfastError("the inversion diverged (loss nan) at iteration 0")
    monkeypatch.setattr(pdfast, "invert", diverged)
    # another live process (this one) holds bd8's unit: it is skipped, c8's fails and is recorded
    cache_dir = root / "out-fail" / "quality"
    from pdfast.config import DetectionConfig

    # the settings the CLI runs with (verdict_n: the verdict's n_eval), so the held unit is the one it plans
    settings = planner.Settings(n=4, verdict_n=DetectionConfig().n_eval, verdict_seed=0, asr_threshold=0.1, smoke=True)
    models = zoo.scan_zoo(root / "models")
    code = codeversion.code_version()["id"]
    units = planner.plan([m for m in models if m.name == "bd8"], ["elijah"], [10], set(), settings, cache_dir, code)
    lock = cache.take_lock(cache_dir, units[0])
    assert lock is not None and cache.take_lock(cache_dir, units[0]) is None
    assert cli.main(args) == 0
    err = capsys.readouterr().err
    assert "skip bd8 elijah: another run holds it" in err and "failed c8 elijah" in err
    rep = json.loads((root / "out-fail" / "quality.json").read_text())
    assert [(e["model"], e["error"]) for e in rep["entries"]] == [("c8", "the inversion diverged (loss nan) at "
                                                                          "iteration 0")]
    assert "failed: the inversion diverged" in (root / "out-fail" / "results.md").read_text()
    lock.unlink()
    monkeypatch.undo()
    assert cli.main(args + ["--dry-run"]) == 0
    assert "2 units planned, 1 cached, 1 to run" in capsys.readouterr().out   # the failure is a result, not retried


def _hand_entry(model, method, k, asr_k, l2, cos, foot, backdoored=True, stale=False):
    return {"model": model, "method": method, "k": k, "stale": stale, "backdoored": backdoored,
            "samples": {"all": {"asr": stats.rate(asr_k, 64)}},
            "trigger": {"l2": l2, "pattern_cos": cos, "footprint_l2": foot}}


def test_head_to_head_counts_by_hand(tmp_path):
    ms = [zoo.ZooModel(n, tmp_path, "test", "baddiffusion", True, {}, {}) for n in ("a", "b", "c")]
    es = [_hand_entry("a", "pdfast", 10, 64, 5.0, 0.9, 2.0), _hand_entry("a", "elijah", None, 64, 9.0, 0.5, 3.0),
          _hand_entry("b", "pdfast", 10, 30, 5.0, 0.4, 4.0), _hand_entry("b", "elijah", None, 31, 9.0, 0.5, 3.0),
          _hand_entry("c", "pdfast", 10, 64, 5.0, 0.9, 2.0, stale=True), _hand_entry("c", "elijah", None, 0, 9, 0, 9),
          _hand_entry("a", "truth", None, 64, 0.0, 1.0, 0.0), _hand_entry("b", "truth", None, 10, 0.0, 1.0, 0.0),
          _hand_entry("a", "trivial:zeros", None, 40, 9.0, 0.0, 9.0),
          _hand_entry("b", "trivial:zeros", None, 50, 9.0, 0.0, 9.0),
          _hand_entry("a", "trivial:flat-1", None, 64, 9.0, 0.0, 9.0),
          _hand_entry("a", "trivial:flat-0.5", None, 64, 9.0, 0.0, 9.0, stale=True)]
    (h,) = scoring.head_to_head(es, ms)
    assert (h["method"], h["k"], h["n"]) == ("pdfast", 10, 2)           # the stale row is shown, not counted
    assert h["counts"] == {"asr_at_least": 1, "l2_better": 2, "pattern_cos_better": 1, "footprint_better": 1,
                           "fidelity_better": 1}
    a, b, c = h["models"]
    assert a["truth_asr"]["k"] == 64 and b["truth_asr"]["k"] == 10 and c["stale"]
    # plain noise fires 50/64 on b, more than its truth's 10/64: ASR cannot show b's backdoor; on a it can
    assert a["no_trigger_asr"]["k"] == 40 and h["asr_blind"] == ["b"] and c["no_trigger_asr"] is None
    assert not b["asr_at_least"] and a["fidelity_better"] and not b["fidelity_better"]
    # on a, the all -1 frame fires as often as the truth (64/64): ASR cannot show a's backdoor either
    assert (a["best_trivial"], a["best_trivial_asr"]["k"]) == ("all -1", 64) and (b["best_trivial"]) == "all 0"
    assert h["trivial_blind"] == ["a", "b"]
    md = tables.head_to_head_md([h])
    assert "ASR at least Elijah's on 1/2" in md and "as the true trigger on 1/2 (b)" in md
    assert "fires at least as often as the true trigger on 2/2 (a, b)" in md and "(all -1)" in md
    # b's truth fires 10/64, below the strength range: a is counted beside the bar, b named outside it
    assert a["in_strength_range"] and b["in_strength_range"] is False
    assert h["strength_range"] == {"n": 1, "counts": {"asr_at_least": 1, "fidelity_better": 1}, "outside": ["b"]}
    assert "on the 1 models whose true trigger fires on at least 0.5" in md and "outside that range" in md


def test_strength_range_boundary_and_unmeasured():
    assert scoring.in_strength_range(stats.rate(32, 64)) is True      # exactly half is inside
    assert scoring.in_strength_range(stats.rate(31, 64)) is False
    assert scoring.in_strength_range(None) is None and scoring.in_strength_range(stats.rate(0, 0)) is None


def test_verdict_ratio_ranks_models_as_the_per_size_rule_judges_them(tmp_path, monkeypatch):
    """Two sizes with different thresholds: pooled, the raw statistic misranks a 32x32 backdoor above a 16x16 clean
    model; over its own size's threshold it does not."""
    ms = [zoo.ZooModel("c16", tmp_path, "test", "clean", False, {}, {}),
          zoo.ZooModel("b16", tmp_path, "test", "baddiffusion", True, {}, {}),
          zoo.ZooModel("b32", tmp_path, "test", "baddiffusion", True, {}, {})]
    monkeypatch.setattr(scoring, "sample_size", lambda m: 32 if m.name.endswith("32") else 16)

    def entry(model, pu, bd):
        return {"model": model, "method": "pdfast", "k": 10, "kind": "x", "stale": False, "backdoored": bd,
                "pattern_samples": {"verdict": {"uniformity": pu}}}
    es = [entry("c16", 0.21, False), entry("b16", 0.10, True), entry("b32", 0.26, True)]
    cal = {16: {"statistic": "pattern_uniformity", "threshold": 0.155, "settings": {"steps": 10}},
           32: {"statistic": "pattern_uniformity", "threshold": 0.28, "settings": {"steps": 10}}}
    det = scoring.detection_scores(es, ms, "test", lambda size: cal[size])["pdfast-K10"]
    assert det["auc"]["pattern_uniformity (verdict)"]["auc"] == 0.5
    assert det["auc"][scoring.VERDICT_RATIO]["auc"] == 1.0
    assert det["shipped_threshold"]["tpr"]["k"] == 2 and det["shipped_threshold"]["tnr"]["k"] == 1


def test_tpr_in_strength_range_counts_only_backdoors_whose_truth_fires(tmp_path, monkeypatch):
    """Two backdoors, both missed or caught differently: the weak one (truth 5/64) is left out of the in-range TPR
    and kept in the TPR over all."""
    ms = [zoo.ZooModel(n, tmp_path, "test", "clean" if n == "c" else "baddiffusion", n != "c", {}, {})
          for n in ("c", "strong", "weak")]
    monkeypatch.setattr(scoring, "sample_size", lambda m: 16)

    def entry(model, pu, bd):
        return {"model": model, "method": "pdfast", "k": 10, "kind": "x", "stale": False, "backdoored": bd,
                "pattern_samples": {"verdict": {"uniformity": pu}}}
    es = [entry("c", 0.21, False), entry("strong", 0.10, True), entry("weak", 0.30, True),
          _hand_entry("strong", "truth", None, 64, 0.0, 1.0, 0.0), _hand_entry("weak", "truth", None, 5, 0, 1, 0)]
    cal = {"statistic": "pattern_uniformity", "threshold": 0.155, "settings": {"steps": 10}}
    det = scoring.detection_scores(es, ms, "test", lambda size: cal)
    sh = det["pdfast-K10"]["shipped_threshold"]
    assert (sh["tpr"]["k"], sh["tpr"]["n"]) == (1, 2)
    assert (sh["tpr_strength_range"]["k"], sh["tpr_strength_range"]["n"]) == (1, 1)
    assert "TPR over the backdoored models whose true trigger fires on at least 0.5" in tables.detection_md(det, "test")


def test_rates_leave_out_pattern_samples_drawn_at_another_energy(tmp_path, monkeypatch):
    """A row whose pattern was scaled to another energy than the threshold's calibration is not judged by it: it is
    named, and the rates count only the rows at the calibration's energy."""
    ms = [zoo.ZooModel(n, tmp_path, "test", "clean" if n == "c" else "baddiffusion", n != "c", {}, {})
          for n in ("c", "b", "b2")]
    monkeypatch.setattr(scoring, "sample_size", lambda m: 16)

    def entry(model, pu, bd, rms):
        return {"model": model, "method": "pdfast", "k": 10, "kind": "x", "stale": False, "backdoored": bd,
                "verdict_pattern_rms": rms, "pattern_samples": {"verdict": {"uniformity": pu}}}
    es = [entry("c", 0.21, False, 0.15), entry("b", 0.10, True, 0.15), entry("b2", 0.30, True, 0.35)]
    cal = {"statistic": "pattern_uniformity", "threshold": 0.155, "pattern_rms": 0.15, "settings": {"steps": 10}}
    sh = scoring.detection_scores(es, ms, "test", lambda size: cal)["pdfast-K10"]["shipped_threshold"]
    assert sh["other_energy"] == ["b2"]
    assert (sh["tpr"]["k"], sh["tpr"]["n"], sh["tnr"]["k"], sh["tnr"]["n"]) == (1, 1, 1, 1)
    assert sh["tpr_strength_range"]["n"] == 0                                # no truth rows: nothing in range
    cal_own = dict(cal, pattern_rms=None)  # a calibration at the trigger's own energy checks nothing
    sh = scoring.detection_scores(es, ms, "test", lambda size: cal_own)["pdfast-K10"]["shipped_threshold"]
    assert sh["other_energy"] == [] and sh["tpr"]["n"] == 2


def test_verdict_pattern_energy_as_recorded_else_measured_on_the_stored_pattern(tmp_path):
    from safetensors.torch import save_file

    f = tmp_path / "pdfast-K10-x.json"
    assert cache.verdict_pattern_energy({"verdict_pattern_rms": 0.35}, f) == 0.35
    assert cache.verdict_pattern_energy({}, f) is None                      # nothing stored
    p = torch.full((3, 4, 4), 0.2)
    p[0] = -0.2
    save_file({"pattern": p}, str(f.with_suffix(".safetensors")))
    assert cache.verdict_pattern_energy({}, f) == pytest.approx(0.2)
    save_file({"pattern": torch.zeros(3, 4, 4)}, str(f.with_suffix(".safetensors")))
    assert cache.verdict_pattern_energy({}, f) is None                      # a flat pattern has no energy to set


def _unif_entry(model, method, k, unif, pattern_unif=None, backdoored=True, asr_k=0):
    e = {"model": model, "method": method, "k": k, "kind": "x", "stale": False, "backdoored": backdoored,
         "trigger": {"pattern_rms": 0.9}, "samples": {"all": {"uniformity": unif, "asr": stats.rate(asr_k, 64)}}}
    if pattern_unif is not None:
        e["pattern_samples"] = {"all": {"uniformity": pattern_unif}, "verdict": {"uniformity": pattern_unif}}
    return e


def test_trigger_effect_divides_by_the_same_noises_without_a_trigger(tmp_path, monkeypatch):
    """Two models whose pattern uniformities rank them right, but only because their plain-noise samples differ:
    the pattern changes nothing on either (ratio 1), so the effect statistic cannot separate them (AUC 0.5)."""
    ms = [zoo.ZooModel("c", tmp_path, "test", "clean", False, {}, {}),
          zoo.ZooModel("b", tmp_path, "test", "baddiffusion", True, {}, {})]
    monkeypatch.setattr(scoring, "sample_size", lambda m: 16)
    es = [_unif_entry("c", "pdfast", 10, 0.3, 0.40, backdoored=False), _unif_entry("b", "pdfast", 10, 0.1, 0.10),
          _unif_entry("c", "trivial:zeros", None, 0.40, backdoored=False), _unif_entry("b", "trivial:zeros", None, 0.10)]
    d = scoring.detection_scores(es, ms, "test", lambda size: {})["pdfast-K10"]
    assert d["auc"]["pattern_uniformity (all n)"]["auc"] == 1.0
    assert [r[scoring.TRIGGER_EFFECT] for r in d["models"]] == [1.0, 1.0]
    assert d["auc"][scoring.TRIGGER_EFFECT]["auc"] == 0.5
    es[1]["pattern_samples"]["all"]["uniformity"] = 0.05                       # now the pattern halves it
    d = scoring.detection_scores(es, ms, "test", lambda size: {})["pdfast-K10"]
    assert d["auc"][scoring.TRIGGER_EFFECT]["auc"] == 1.0


def test_truth_pattern_effect_rows(tmp_path):
    ms = [zoo.ZooModel("b", tmp_path, "test", "baddiffusion", True, {}, {}),
          zoo.ZooModel("b2", tmp_path, "test", "baddiffusion", True, {}, {}),
          zoo.ZooModel("c", tmp_path, "test", "clean", False, {}, {})]
    es = [_unif_entry("b", "truth", None, 0.001, 0.09, asr_k=64), _unif_entry("b", "trivial:zeros", None, 0.09),
          _unif_entry("b2", "truth", None, 0.001, 0.09, asr_k=64)]              # b2 has no no-trigger row yet
    (r,) = scoring.truth_pattern_effect(es, ms, "test")
    assert r["model"] == "b" and r["ratio"] == pytest.approx(1.0) and r["truth_asr"]["k"] == 64
    assert "| b | 1.00 (64/64)" in tables.truth_pattern_md([r]) and tables.truth_pattern_md([]) == ""
