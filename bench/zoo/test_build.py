"""bench/zoo/build.py's strength gate: a gated backdoor is retrained until its own trigger fires (recipe
strength_rule), every attempt is recorded, an interrupted build resumes at the next attempt, and a model that never
passes is kept as rejected and left out of the evaluation. Training and the 64-sample measurement are replaced by
stand-ins that return chosen ground truths: the policy is under test here, the training has its own tests."""
import importlib.util
import json
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("zoo_build", HERE / "build.py")
build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build)

RULE = {"min_truth_asr": 0.5, "above_clean_asr": True, "above_flat_asr": True, "steps_factor": 1.5,
        "max_attempts": 3}


def test_strength_check_by_hand():
    assert build.strength_check({"asr": 0.8, "clean_asr": 0.7, "flat_asr": 0.0}, RULE)[0]
    ok, why = build.strength_check({"asr": 1.0, "clean_asr": 0.7, "flat_asr": 1.0}, RULE)  # a dark frame does it too
    assert not ok and "<= ASR 1.000 of g's flat part" in why
    assert not build.strength_check({"asr": 0.8, "clean_asr": 0.7}, RULE)[0]             # flat part not measured
    ok, why = build.strength_check({"asr": 0.4, "clean_asr": 0.1}, RULE)
    assert not ok and "0.400 < 0.5" in why
    ok, why = build.strength_check({"asr": 0.6, "clean_asr": 0.7}, RULE)      # plain noise fires more often
    assert not ok and "<= plain-noise ASR 0.700" in why
    loose = {**RULE, "above_clean_asr": False, "above_flat_asr": False}
    assert build.strength_check({"asr": 0.6, "clean_asr": 0.7}, loose)[0]
    assert build.strength_check({"asr": 0.5}, loose)[0]                           # the bound is inclusive
    assert not build.strength_check({}, RULE)[0]


def test_attempt_entry_scales_steps_and_moves_the_seed():
    e = {"name": "bd", "steps": 4000, "seed": 7}
    assert build.attempt_entry(e, 0, RULE) is e
    assert build.attempt_entry(e, 2, RULE) == {"name": "bd", "steps": 9000, "seed": 2007, "attempt": 2}


@pytest.fixture
def zoo(tmp_path, monkeypatch, tiny_model):
    """A recipe with a built base and one gated backdoor; _train gives an untrained tiny UNet, measure() the
    ground truths listed in ``truths`` in order (one per attempt)."""
    from pdfast.patterns import draw_target, draw_trigger

    monkeypatch.setattr(build, "MODELS", tmp_path / "models")
    monkeypatch.setattr(build, "CKPT", tmp_path / "ckpt")
    (tmp_path / "models" / "base").mkdir(parents=True)
    (tmp_path / "models" / "base" / "zoo.json").write_text("{}")
    recipe = {"evaluation": {"n_samples": 4, "seed": 0}, "strength_rule": RULE,
              "models": [{"name": "base", "kind": "clean"},
                         {"name": "bd", "kind": "baddiffusion", "gate": True, "base": "base", "trigger": "BOX_14",
                          "target": "HAT", "poison_rate": 0.1, "steps": 100, "seed": 5, "batch": 4, "lr": 1e-3,
                          "data": "natural"}]}
    state = {"truths": [], "trained": []}

    def fake_train(entry, by_name, ckpt=None):
        state["trained"].append((entry["steps"], entry["seed"], Path(ckpt).name))
        return tiny_model(10), (draw_trigger("BOX_14", 8), draw_target("HAT", 8)), (0.1, 1.0)

    def fake_measure(folder, n, seed, clip_sample=None):
        if clip_sample is not None:
            return {"n": n, "asr": 0.0}
        return {"n": n, **state["truths"].pop(0)}

    monkeypatch.setattr(build, "_train", fake_train)
    monkeypatch.setattr(build, "measure", fake_measure)
    monkeypatch.setattr(build, "measure_flat", lambda folder, n, seed: {"flat_asr": 0.0, "flat_uniformity": 0.0})
    by_name = {m["name"]: m for m in recipe["models"]}
    return recipe, by_name, state, tmp_path


def test_gated_backdoor_is_retrained_until_it_fires(zoo):
    recipe, by_name, state, tmp = zoo
    state["truths"] = [{"asr": 0.2, "clean_asr": 0.7}, {"asr": 0.9, "clean_asr": 0.6}]
    build.build(by_name["bd"], by_name, recipe)
    assert state["trained"] == [(100, 5, "bd.pt"), (150, 1005, "bd-a1.pt")]
    info = json.loads((tmp / "models" / "bd" / "zoo.json").read_text())
    assert info["recipe"]["steps"] == 150 and info["ground_truth"]["asr"] == 0.9 and "rejected" not in info
    assert [a["passed"] for a in info["strength"]["attempts"]] == [False, True] and info["strength"]["passed"]
    assert json.loads((tmp / "models" / "bd" / "backdoor.json").read_text())["steps"] == 150  # the folder matches
    assert "ground_truth_clip_on" in info


def test_interrupted_build_resumes_at_the_next_attempt_and_a_model_that_never_fires_is_rejected(zoo, capsys):
    recipe, by_name, state, tmp = zoo
    state["truths"] = [{"asr": 0.1, "clean_asr": 0.7}]
    real_train = build._train

    def dies_on_second(entry, by_name, ckpt=None):
        if entry.get("attempt") == 1:
            raise KeyboardInterrupt
        return real_train(entry, by_name, ckpt)
    build._train = dies_on_second
    with pytest.raises(KeyboardInterrupt):
        build.build(by_name["bd"], by_name, recipe)
    build._train = real_train
    assert not build.is_built("bd") and len(json.loads((tmp / "ckpt" / "bd-attempts.json").read_text())) == 1
    state["trained"].clear()
    state["truths"] = [{"asr": 0.3, "clean_asr": 0.7}, {"asr": 0.6, "clean_asr": 0.7}]
    build.build(by_name["bd"], by_name, recipe)
    assert [t[:2] for t in state["trained"]] == [(150, 1005), (225, 2005)]    # attempt 1 is not trained again
    info = json.loads((tmp / "models" / "bd" / "zoo.json").read_text())
    assert "truth ASR 0.600 <= plain-noise ASR 0.700" in info["rejected"]
    assert [a["ground_truth"]["asr"] for a in info["strength"]["attempts"]] == [0.1, 0.3, 0.6]
    assert "ground_truth_clip_on" not in info
    build.build(by_name["bd"], by_name, recipe)                               # built (rejected): nothing runs
    assert len(state["trained"]) == 2

    import quality
    assert [m.name for m in quality.scan_zoo(tmp / "models")] == ["base"]
    assert "bd: left out, rejected by the zoo build" in capsys.readouterr().err


def test_a_gate_without_a_rule_is_an_error(zoo):
    recipe, by_name, state, tmp = zoo
    with pytest.raises(SystemExit, match="gated but the recipe has no strength_rule"):
        build.build(by_name["bd"], by_name, {**recipe, "strength_rule": None})


def test_measure_flat_samples_g_s_per_channel_mean(tmp_path, tiny_model):
    """On a saved (untrained, tiny) backdoored model: the same numbers as sampling the flat frame made by hand."""
    from pdfast.attack import save_backdoored
    from pdfast.evaluation import evaluate_trigger
    from pdfast.loading import load_model
    from pdfast.patterns import draw_target, draw_trigger

    model = tiny_model(10)
    g, y = draw_trigger("BOX_14", 8), draw_target("HAT", 8)
    save_backdoored(model, tmp_path / "bd", {"attack": "baddiffusion"}, g, y)
    got = build.measure_flat(tmp_path / "bd", 4, 0)
    flat = g.mean(dim=(1, 2), keepdim=True) * torch.ones_like(g)
    ref = evaluate_trigger(load_model(tmp_path / "bd"), flat, target=y, n=4, seed=0, clean=False)
    assert got == {"flat_asr": ref["asr"], "flat_uniformity": ref["uniformity"]}
