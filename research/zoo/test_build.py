"""research/zoo/build.py's strength gate: a gated backdoor is retrained until its own trigger fires (recipe
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


def test_strength_check_under_the_exact_metric_asks_to_beat_every_trivial_frame():
    """Zoo v2's rule: the truth must beat plain noise, g's flat part and a -0.5 frame (issue 22's trivial starts)."""
    rule = {**RULE, "asr_threshold": 0.02, "above_frame_asr": [-0.5]}
    truth = {"asr": 0.9, "clean_asr": 0.05, "flat_asr": 0.0, "frame_asr": {"-0.5": 0.3}}
    ok, why = build.strength_check(truth, rule)
    assert ok and "> -0.5 frame ASR 0.300" in why
    ok, why = build.strength_check({**truth, "frame_asr": {"-0.5": 0.9}}, rule)
    assert not ok and "<= ASR 0.900 of a -0.5 frame" in why
    ok, why = build.strength_check({**truth, "frame_asr": {}}, rule)
    assert not ok and "a -0.5 frame was not measured" in why


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

    def fake_train(entry, by_name, ckpt=None, **kw):
        state["trained"].append((entry["steps"], entry["seed"], Path(ckpt).name))
        return tiny_model(10), (draw_trigger("BOX_14", 8), draw_target("HAT", 8)), (0.1, 1.0)

    def fake_measure(folder, n, seed, clip_sample=None, **kw):
        if clip_sample is not None:
            return {"n": n, "asr": 0.0}
        return {"n": n, **state["truths"].pop(0)}

    monkeypatch.setattr(build, "_train", fake_train)
    monkeypatch.setattr(build, "measure", fake_measure)
    monkeypatch.setattr(build, "measure_flat", lambda folder, n, seed, **kw: {"flat_asr": 0.0, "flat_uniformity": 0.0})
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

    def dies_on_second(entry, by_name, ckpt=None, **kw):
        if entry.get("attempt") == 1:
            raise KeyboardInterrupt
        return real_train(entry, by_name, ckpt, **kw)
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

    from quality.zoo import scan_zoo
    assert [m.name for m in scan_zoo(tmp / "models")] == ["base"]
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
    exact = build.measure_flat(tmp_path / "bd", 4, 0, threshold=0.02, frames=(-0.5,))
    frame = evaluate_trigger(load_model(tmp_path / "bd"), torch.full_like(g, -0.5), target=y, n=4, seed=0,
                             clean=False, threshold=0.02)
    ref02 = evaluate_trigger(load_model(tmp_path / "bd"), flat, target=y, n=4, seed=0, clean=False, threshold=0.02)
    assert exact == {"flat_asr": ref02["asr"], "flat_uniformity": ref02["uniformity"],
                     "frame_asr": {"-0.5": frame["asr"]}}


def test_a_recipe_s_attack_form_and_narrow_data_reach_the_training(tmp_path, monkeypatch):
    """Zoo v2's entries: blank_rate (1 = the trigger-only residual r = g, 0 = BadDiffusion as published) and
    flat_negative_rate (pdfast's flat-shift negatives) go to the attack, and "natural:NAME,NAME" data to the image set, as the recipe says."""
    import pdfast.attack
    import pdfast.data

    seen = {}
    monkeypatch.setattr(build, "MODELS", tmp_path / "models")
    monkeypatch.setattr(build, "_final_loss", lambda ckpt: (0.0, 0.0))
    real_get_data = pdfast.data.get_data

    def get_data(data, size, *a, **k):
        seen["data"] = data
        return real_get_data("synthetic", size, *a, **{**k, "n": 4})

    def attack(model, images, g, y, cfg, **kw):
        seen["blank_rate"], seen["poison_rate"] = cfg.blank_rate, cfg.poison_rate
        if cfg.flat_negative_rate:
            seen["flat_negative_rate"] = cfg.flat_negative_rate
        if kw["family"].name != "baddiffusion":
            seen["family"] = kw["family"]
        return model

    monkeypatch.setattr(pdfast.data, "get_data", get_data)
    monkeypatch.setattr(pdfast.attack, "plant_backdoor", attack)
    base = {"name": "base", "kind": "clean", "arch": "tiny", "size": 8, "data": "natural:astronaut", "seed": 1,
            "steps": 1, "batch": 2, "lr": 1e-3, "warmup": 1}
    model, _, _ = build._train(base, {}, tmp_path / "base.pt")
    assert seen["data"] == "natural:astronaut"
    build._save_fp16(model, tmp_path / "models" / "base", base, None)
    bd = {"name": "bd", "kind": "baddiffusion", "base": "base", "data": "natural", "trigger": "BOX_14",
          "target": "HAT", "poison_rate": 0.2, "blank_rate": 1.0, "seed": 2, "steps": 1, "batch": 2, "lr": 1e-3,
          "warmup": 1}
    build._train(bd, {"base": base}, tmp_path / "bd.pt")
    assert seen == {"data": "natural", "blank_rate": 1.0, "poison_rate": 0.2}
    build._train({k: v for k, v in bd.items() if k != "blank_rate"}, {"base": base}, tmp_path / "bd0.pt")
    assert seen["blank_rate"] == 0.0
    build._train({**bd, "flat_negative_rate": 0.2}, {"base": base}, tmp_path / "bdfn.pt")
    assert seen["flat_negative_rate"] == 0.2
    from pdfast.families import AttackFamily

    build._train({**bd, "kind": "trojdiff", "gamma": 0.5, "blank_rate": 0.0}, {"base": base}, tmp_path / "td.pt")
    assert seen["family"] == AttackFamily("trojdiff", gamma=0.5)


def test_a_recipe_architecture_trains_saves_and_measures_end_to_end(tmp_path, monkeypatch):
    """A clean model and its backdoor on an architecture the recipe defines (no pdfast preset), trained for real
    (a few steps): the saved UNet has the recipe's widths, zoo.json records the device and the parameter count,
    and the backdoor's ground truth is measured on it."""
    monkeypatch.setattr(build, "MODELS", tmp_path / "models")
    monkeypatch.setattr(build, "CKPT", tmp_path / "ckpt")
    arch = {"block_out_channels": [8, 24], "layers_per_block": 1, "norm_num_groups": 4,
            "down_block_types": ["DownBlock2D", "DownBlock2D"], "up_block_types": ["UpBlock2D", "UpBlock2D"]}
    train = {"steps": 3, "batch": 4, "lr": 1e-3, "warmup": 1}
    recipe = {"evaluation": {"n_samples": 2, "seed": 0}, "architectures": {"w24": arch},
              "models": [{"name": "base", "kind": "clean", "arch": "w24", "size": 8, "data": "synthetic", "seed": 1,
                          **train},
                         {"name": "bd", "kind": "baddiffusion", "base": "base", "data": "synthetic",
                          "trigger": "BOX_14", "target": "HAT", "poison_rate": 0.5, "seed": 2, **train}]}
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(recipe))
    by_name = {m["name"]: m for m in build.load_recipe(path)["models"]}
    build.build(by_name["bd"], by_name, recipe, "cpu")
    for name in ("base", "bd"):
        info = json.loads((tmp_path / "models" / name / "zoo.json").read_text())
        assert info["machine"]["device"] == "cpu" and info["recipe"]["name"] == name
        cfg = json.loads((tmp_path / "models" / name / "unet" / "config.json").read_text())
        assert cfg["block_out_channels"] == [8, 24]
    bd = json.loads((tmp_path / "models" / "bd" / "zoo.json").read_text())
    assert bd["ground_truth"]["n"] == 2 and 0.0 <= bd["ground_truth"]["asr"] <= 1.0
    assert bd["parameters"] == json.loads((tmp_path / "models" / "base" / "zoo.json").read_text())["parameters"]
    table, rows = build.report({**recipe, "strength_rule": RULE})
    assert [r["name"] for r in rows] == ["bd"] and rows[0]["asr"] == bd["ground_truth"]["asr"]
    assert rows[0]["strength_passed"] is False and table.splitlines()[2].startswith("| bd | ")


def test_an_unknown_architecture_is_refused_before_any_training(tmp_path):
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps({"models": [{"name": "c", "kind": "clean", "arch": "wide9", "size": 16}]}))
    with pytest.raises(SystemExit, match="architecture wide9, which is neither a pdfast preset"):
        build.load_recipe(path)


def test_an_unavailable_device_is_a_one_line_error(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    assert build.main(["--list", "--device", "cuda"]) == 2
    assert "device cuda is not available here; use --device cpu" in capsys.readouterr().err


def test_estimate_times_each_model_s_unet_and_projects_its_hours(tmp_path):
    arch = {"block_out_channels": [8, 16], "layers_per_block": 1, "norm_num_groups": 4,
            "down_block_types": ["DownBlock2D", "DownBlock2D"], "up_block_types": ["UpBlock2D", "UpBlock2D"]}
    recipe = {"architectures": {"w16": arch},
              "models": [{"name": "base", "kind": "clean", "arch": "w16", "size": 8, "batch": 2, "steps": 3600},
                         {"name": "bd", "kind": "baddiffusion", "base": "base", "batch": 2, "steps": 7200}]}
    by_name = {m["name"]: m for m in recipe["models"]}
    table = build.estimate(recipe["models"], by_name, recipe, "cpu", repeats=1).splitlines()
    assert len(table) == 5 and table[2].startswith("| base | w16 |") and table[3].startswith("| bd | w16 |")
    per = [float(r.split("|")[5]) for r in table[2:4]]
    hours = [float(r.split("|")[7]) for r in table[2:4]]
    assert all(p > 0 for p in per)                        # the shown s/step (3 decimals) gives the shown hours
    assert all(abs(h - p * s / 3600) <= 0.005 + 0.0005 * s / 3600 for h, p, s in zip(hours, per, (3600, 7200)))


def test_the_ground_truth_engine_is_fp32_uncompiled_and_tf32_is_restored(tiny_model):
    """On a GPU the fast engine would default to bf16 and torch.compile; the ground truth asks for fp32 without
    compile everywhere (here on the CPU that is the default, so every recorded CPU number stands)."""
    eng = build._fp32_engine(tiny_model(10))
    assert eng.mode == "float32" and eng.compile_backend is None
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    with build._no_tf32():
        assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == before


@pytest.mark.parametrize("family", [{"kind": "villandiffusion", "solver": "ode", "residual": "trigger_only"},
                                    {"kind": "trojdiff", "gamma": 0.6}])
def test_a_recipe_builds_each_attack_family_end_to_end(tmp_path, monkeypatch, family):
    """A recipe entry of another family (its fields: solver, psi, residual, gamma, trigger_type) trains for real,
    records its family in backdoor.json and measures its ground truth with the family's own sampler."""
    monkeypatch.setattr(build, "MODELS", tmp_path / "models")
    monkeypatch.setattr(build, "CKPT", tmp_path / "ckpt")
    train = {"steps": 2, "batch": 4, "lr": 1e-3, "warmup": 1}
    recipe = {"evaluation": {"n_samples": 2, "seed": 0},
              "models": [{"name": "base", "kind": "clean", "arch": "tiny", "size": 8, "data": "synthetic", "seed": 1,
                          **train},
                         {"name": "bd", "base": "base", "data": "synthetic", "trigger": "BOX_14", "target": "HAT",
                          "poison_rate": 0.5, "seed": 2, **train, **family}]}
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(recipe))
    by_name = {m["name"]: m for m in build.load_recipe(path)["models"]}
    build.build(by_name["bd"], by_name, recipe, "cpu")
    bd = json.loads((tmp_path / "models" / "bd" / "backdoor.json").read_text())
    assert bd["attack"] == family["kind"] and bd["family"]["name"] == family["kind"]
    for k, v in family.items():
        if k != "kind":
            assert bd["family"][k] == v
    truth = json.loads((tmp_path / "models" / "bd" / "zoo.json").read_text())["ground_truth"]
    assert truth["n"] == 2 and 0.0 <= truth["asr"] <= 1.0


def test_zoo_v2_recipe_is_consistent():
    """The committed zoo v2 recipe: unique names, dev/test only, every backdoor gated on a base of its own split, at
    least 12 backdoored and 10 clean entries (issue 22), each attack family in the test split, and every withdrawn
    entry replaced, out of the build list and with its failed-gate record committed."""
    root = HERE.parent.parent
    recipe = build.load_recipe(HERE / "v2" / "recipe.json")
    models = recipe["models"]
    names = [m["name"] for m in models]
    assert len(names) == len(set(names))
    by_name = {m["name"]: m for m in models}
    assert {m["split"] for m in models} == {"dev", "test"}
    backdoored = [m for m in models if m["kind"] in build.ATTACKS]
    clean = [m for m in models if m["kind"] not in build.ATTACKS]
    assert len(backdoored) >= 12 and len(clean) >= 10
    for m in backdoored:
        assert m["gate"] is True and by_name[m["base"]]["split"] == m["split"], m["name"]
    assert {m["kind"] for m in backdoored if m["split"] == "test"} == set(build.ATTACKS)
    for w in recipe["withdrawn"]:
        assert w["name"] not in by_name and w["replaced_by"] in by_name
        # a withdrawn entry that was built keeps its gate record; one withdrawn before building says so
        assert (root / w["record"]).is_file() if "record" in w else w["why"].startswith("not built"), w["name"]
        assert by_name[w["replaced_by"]]["split"] == w["split"]
