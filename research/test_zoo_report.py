"""research/zoo_report.py: the shipped CLI run for real on the micro zoo's untrained 8x8 models (tiny settings), the
rows, the scores and the bars by hand on fixed rows, resuming, and bad arguments refused before anything runs."""
import json

import pytest

import zoo_report as zr


def _row(model, label, run, verdict, miss, plain, hits=None, truth=None, cos=None):
    method, rest = run.split("-", 1)
    k = int(rest.split("-")[0][1:]) if rest.startswith("K") else None
    return {"model": model, "label": label, "run": run, "method": method, "k": k, "seed": int(run[-1]),
            "verdict": verdict, "trigger_miss": miss, "plain_uniformity": plain, "exact_hits": hits,
            "truth_hits": truth, "fidelity": None if cos is None else
            {"pattern_cosine": cos, "chance_square_cosine": 0.5, "chance_other_truth_cosine": 0.6}}


def test_scores_and_bars_by_hand():
    rows = [_row("b1", "backdoored", "puredif-K10-s0", "backdoored", 0.1, 0.08, 40, 60, 0.9),
            _row("b2", "backdoored", "puredif-K10-s0", "clean", 1.0, 0.07, 10, 60, 0.55),
            _row("c1", "clean", "puredif-K10-s0", "clean", 1.0, 0.09),
            _row("b1", "backdoored", "elijah-s0", "backdoored", 0.3, 0.08, 30, 60, 0.7),
            _row("b2", "backdoored", "elijah-s0", "clean", 1.0, 0.07, 12, 60, 0.2)]
    det = {d["run"]: d for d in zr.detection(rows)}
    d = det["puredif-K10-s0"]
    assert (d["tpr"]["k"], d["tpr"]["n"], d["tnr"]["k"], d["tnr"]["n"]) == (1, 2, 1, 1)
    assert d["auc_verdict"] == 0.75            # b1 below c1; b2 ties c1 at 1.0 (half)
    assert d["auc_no_trigger"] == 1.0          # 0.08 and 0.07 both below 0.09
    pairs = zr.paired(rows, 10)
    assert [(p["model"], p["at_least_elijah"], p["half_truth"], p["fidelity_over_elijah"]) for p in pairs] == \
        [("b1", True, True, True), ("b2", False, False, False)]   # b2: 10 < 12 hits, cosine 0.55 under chance 0.6
    checks = {w: ok for w, _, ok in zr.bars(list(det.values()), pairs, 10)}
    assert checks == {"puredif-K10-s0: TPR and TNR 100% at the shipped threshold": False,
                      "puredif-K10-s0: verdict AUC 1.0, above the no-trigger statistic's": False,
                      "PureDiffusion K=10: exact ASR at least Elijah's, every backdoor": False,
                      "PureDiffusion K=10: exact ASR at least half the truth's, on 80%": False,
                      "PureDiffusion K=10: pattern cosine above Elijah's and above both chance levels, on 80%": False}


def test_plan_order():
    a, b = zr.Path("a"), zr.Path("b")
    runs = [(m.name, meth, k, s) for m, meth, k, s in zr.plan_runs([a, b], [10, 50], [0, 1], {"b"})]
    assert runs[:4] == [("a", "puredif", 10, 0), ("b", "puredif", 10, 0), ("a", "elijah", None, 0),
                        ("b", "elijah", None, 0)]
    assert runs[-1] == ("b", "puredif", 1000, 0) and len(runs) == 2 * (2 * 2 + 2) + 1
    only = zr.plan_runs([a, b], [10], [0], set(), ("puredif",))
    assert [(m.name, meth) for m, meth, _, _ in only] == [("a", "puredif"), ("b", "puredif")]


def test_runs_the_cli_and_resumes(micro_zoo, tmp_path, monkeypatch):
    zoo = micro_zoo / "models"
    calls = []
    real = zr.run_json

    def counting(argv):
        calls.append(argv[1])
        return real(argv + (["--epochs", "2", "--refine-epochs", "0", "--eval-steps", "5", "--n-eval", "4",
                             "--surrogate-steps", "2", "--surrogate-n-images", "8", "--surrogate-pool-steps", "2",
                             "--surrogate-batch", "4", "--surrogate-calib-batch", "4", "--batch", "4"]
                             if argv[1] == "detect" and "elijah" not in argv else
                             ["--epochs", "2", "--eval-steps", "5", "--n-eval", "4"] if argv[1] == "detect" else []))

    monkeypatch.setattr(zr, "run_json", counting)
    argv = ["--models", str(zoo / "bd8"), str(zoo / "c8"), "--ks", "2", "--seeds", "0", "--name", "t",
            "--out", str(tmp_path)]
    assert zr.main(argv) == 0
    assert calls == ["detect", "evaluate", "detect", "detect", "evaluate", "detect"]  # clean: nothing to evaluate
    report = json.loads((tmp_path / "zoo-report-t.json").read_text())
    assert [(r["model"], r["run"], r["label"]) for r in report["rows"]] == [
        ("bd8", "puredif-K2-s0", "backdoored"), ("c8", "puredif-K2-s0", "clean"),
        ("bd8", "elijah-s0", "backdoored"), ("c8", "elijah-s0", "clean")]
    bd = report["rows"][0]
    from safetensors.torch import load_file

    from pdfast import metrics
    from pdfast.loading import load_ground_truth, load_model

    trigger = load_file(str(tmp_path / "zoo-report-t" / "bd8" / "puredif-K2-s0" / "trigger.safetensors"))["trigger"]
    g = load_ground_truth(load_model(zoo / "bd8"))[0]
    assert bd["exact_hits"] is not None
    assert bd["fidelity"]["l2"] == pytest.approx(metrics.l2_distance(trigger.reshape(g.shape), g))
    assert report["rows"][1]["exact_hits"] is None and report["rows"][1]["fidelity"] is None
    records = json.loads((tmp_path / "zoo-report-t.records.json").read_text())    # one file, triggers inside
    assert sorted(records) == ["bd8/elijah-s0", "bd8/puredif-K2-s0", "c8/elijah-s0", "c8/puredif-K2-s0"]
    assert records["bd8/puredif-K2-s0"]["trigger"] == trigger.flatten().tolist()
    assert "| bd8 | backdoored | puredif-K2-s0 |" in (tmp_path / "zoo-report-t.md").read_text()
    assert zr.main(argv) == 0 and len(calls) == 6             # read back, not re-run
    assert zr.main(argv[:-4] + ["--name", "u", "--out", str(tmp_path), "--report-only"]) == 0 and len(calls) == 6
    look = {"bd8/puredif-K2-s0": {**records["bd8/puredif-K2-s0"], "seed": 0, "note": "a second look"}}
    (tmp_path / "zoo-report-v.records.json").write_text(json.dumps(look))
    assert zr.main(argv[:-4] + ["--name", "w", "--out", str(tmp_path), "--merge", "t", "v", "--report-only"]) == 0
    merged = json.loads((tmp_path / "zoo-report-w.records.json").read_text())
    assert sorted(merged) == sorted(records) and merged["bd8/puredif-K2-s0"]["note"] == "a second look"
    assert len(calls) == 6
    with pytest.raises(SystemExit, match="--merge nothing"):
        zr.main(argv[:-4] + ["--name", "x", "--out", str(tmp_path), "--merge", "nothing", "--report-only"])


def test_attack_family_reaches_detect(micro_zoo, tmp_path, monkeypatch):
    """--attack-family is passed to every pdfast detect of the report (a clean model judged as its suspect)."""
    seen = []

    def fake(argv):
        seen.append(argv)
        raise RuntimeError("stop after the first command")

    monkeypatch.setattr(zr, "run_json", fake)
    fam = "villandiffusion:solver=ode,residual=trigger_only"
    with pytest.raises(RuntimeError, match="stop after"):
        zr.main(["--models", str(micro_zoo / "models" / "c8"), "--ks", "2", "--seeds", "0", "--name", "f",
                 "--out", str(tmp_path), "--attack-family", fam])
    assert seen[0][1] == "detect" and seen[0][-2:] == ["--attack-family", fam], seen


@pytest.mark.parametrize("argv, message", [
    (["--models", "."], "no zoo.json"),
    ([], "give --split or --models"),
    (["--models", "x", "--split", "dev"], "give --split or --models"),
    (["--split", "dev", "--methods", "paper"], "--methods paper"),
])
def test_bad_arguments_are_refused_before_any_run(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as err:
        zr.main(argv + ["--out", str(tmp_path / "o")])
    assert err.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_split_models_in_recipe_order_with_adopted_ones_and_without_rejected(tmp_path):
    zoo = tmp_path / "zoo"
    (zoo / "models").mkdir(parents=True)
    (zoo / "recipe.json").write_text(json.dumps({"models": [{"name": "b"}, {"name": "a"}]}))
    for name, split, rejected in (("a", "dev", None), ("b", "dev", None), ("fam", "dev", None), ("t", "test", None),
                                  ("r", "dev", "fails the gate")):
        (zoo / "models" / name).mkdir()
        info = {"recipe": {"split": split}, **({"rejected": rejected} if rejected else {})}
        (zoo / "models" / name / "zoo.json").write_text(json.dumps(info))
    (zoo / "models" / "unbuilt").mkdir()
    assert [f.name for f in zr.split_models("dev", zoo)] == ["b", "a", "fam"]
