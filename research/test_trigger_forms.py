"""research/trigger_forms.py: the starts, the shared-noise sampler against the engine's own, the verdicts by hand, and
the script end to end on the micro zoo (cache, resume, an outside folder, bad input)."""
import json

import pytest
import torch

import trigger_forms as tf


def _g():
    g = torch.full((3, 8, 8), -1.0)
    g[:, 5:7, 5:7] = 0.25
    return g


def test_starts():
    from pdfast.patterns import paste_trigger

    g = _g()
    grey = tf.start_offsets("grey-bg", g, 4)
    assert torch.equal(grey[g == -1], torch.zeros(int((g == -1).sum()))) and torch.equal(grey[g != -1], g[g != -1])
    assert torch.equal(tf.start_offsets("half", g, 4), 0.5 * g)
    crops, pasted = tf.start_offsets("crops", g, 4), tf.start_offsets("pasted", g, 4)
    assert crops.shape == (4, 3, 8, 8) and crops.std() > 0.05 and not torch.equal(crops[0], crops[1])
    assert torch.equal(pasted, paste_trigger(crops, g))                  # the training form, over the same crops
    assert torch.equal(pasted[:, :, 5:7, 5:7], g[:, 5:7, 5:7].expand(4, -1, -1, -1))
    with pytest.raises(ValueError):
        tf.start_offsets("truth", g, 4)                                  # the shared forms come from asr_threshold


def test_sampler_matches_the_engine(tiny_model):
    from pdfast.engine import make_engine

    eng = make_engine("reference", tiny_model(12))
    g = _g()
    want = eng.sample(5, trigger=g, seed=3, batch=2)
    assert torch.equal(tf.sample_from(eng, g, 5, seed=3, batch=2), want)                 # one shared offset
    assert torch.equal(tf.sample_from(eng, g.expand(5, -1, -1, -1), 5, seed=3, batch=2), want)  # per sample
    per = torch.stack([g, g, -g, g, g])                   # each sample sees its own offset, on the same noises
    got = tf.sample_from(eng, per, 5, seed=3, batch=2)
    assert torch.equal(got[[0, 1, 3, 4]], want[[0, 1, 3, 4]]) and not torch.equal(got[2], want[2])


def test_paired_gain_by_hand():
    a = [0.01, 0.01, 0.01, 0.5, 0.01]
    b = [0.01, 0.5, 0.5, 0.5, 0.5]
    g = tf.paired_gain(a, b, 0.02)
    assert (g["only_a"], g["only_b"], g["gain"]) == (3, 0, 3) and g["p"] == pytest.approx(1 / 8)
    g = tf.paired_gain(b, a, 0.02)
    assert g["gain"] == -3 and g["p"] == pytest.approx(1.0)
    assert tf.paired_gain([0.5] * 3, [0.5] * 3, 0.02)["p"] == 1.0       # no discordant pair: no evidence


def test_verdicts_by_hand():
    hit, miss = 0.01, 0.5
    u = {"truth": {"mse": [0.2] * 8, "uniformity": 0.0}, "zeros": {"mse": [0.3] * 8, "uniformity": 0.1},
         "pasted": {"mse": [hit] * 7 + [miss], "uniformity": 0.02},
         "crops": {"mse": [hit] + [miss] * 7, "uniformity": 0.1}}
    r = tf.summarize({"m": u})[0]
    # 6 samples only the pasted form reaches, none only the crops do: p = 1/64
    assert r["pairs"]["pasted_vs_crops"]["gain"] == 6 and r["pairs"]["pasted_vs_crops"]["p"] == pytest.approx(1 / 64)
    assert r["learned"] is True and r["truth_fires"] is False and "half_vs_flat" not in r["pairs"]
    assert r["forms"]["pasted"]["asr"]["0.02"]["k"] == 7 and r["forms"]["crops"]["asr"]["0.1"]["k"] == 1
    u["crops"]["mse"] = [hit] * 8                                        # the crops alone reach the target
    assert tf.summarize({"m": u})[0]["learned"] is False
    u["truth"]["mse"] = [hit] * 5 + [miss] * 3                           # eps + g fires 5/8 > plain noise's 0/8
    assert tf.summarize({"m": u})[0]["truth_fires"] is True
    assert tf.summarize({"m": {"truth": u["truth"]}})[0]["learned"] is None   # not measured: no verdict


def test_end_to_end_on_the_micro_zoo(micro_zoo, capsys, tmp_path):
    cache, out = micro_zoo / "tf-cache", micro_zoo / "tf"
    args = ["--zoo", str(micro_zoo / "models"), "--cache", str(cache), "--out", str(out), "--n", "2"]
    assert tf.main(args) == 0
    obj = json.loads(out.with_suffix(".json").read_text())
    assert set(obj["units"]) == {"bd8"} and set(obj["units"]["bd8"]) == set(tf.FORMS)
    assert all(len(u["mse"]) == 2 for u in obj["units"]["bd8"].values())
    assert "# Trigger forms on the dev backdoors" in out.with_suffix(".md").read_text()
    capsys.readouterr()
    assert tf.main(args) == 0                                             # cached: nothing is sampled again
    assert " ..." not in capsys.readouterr().err
    # a backdoored folder outside the zoo: measured under its folder name, and remembered by later reports
    import shutil

    outside = tmp_path / "pilot-x"
    shutil.copytree(micro_zoo / "models" / "bd8", outside)
    (outside / "zoo.json").unlink()
    assert tf.main(args + ["--folder", str(outside), "--forms", "pasted", "crops"]) == 0
    assert set(json.loads(out.with_suffix(".json").read_text())["units"]["pilot-x"]) == {"pasted", "crops"}
    assert tf.main(args + ["--report-only"]) == 0
    assert "pilot-x" in json.loads(out.with_suffix(".json").read_text())["units"]
    assert tf.main(args + ["--forms", "half"]) == 0                      # --forms limits the work, not the report
    assert set(json.loads(out.with_suffix(".json").read_text())["units"]["bd8"]) == set(tf.FORMS)
    # the negative control: the clean c8 with bd8's g and target, only the forms the paired tests need
    assert tf.main(args + ["--controls"]) == 0
    obj = json.loads(out.with_suffix(".json").read_text())
    assert set(obj["units"]["c8+bd8"]) == set(tf.CONTROL_FORMS)
    row = next(r for r in obj["rows"] if r["model"] == "c8+bd8")
    assert row["control_of"] == "bd8" and set(row["pairs"]) == {"pasted_vs_crops", "half_vs_flat"}
    assert "**Negative controls**" in out.with_suffix(".md").read_text()
    capsys.readouterr()
    assert tf.main(args + ["--folder", str(micro_zoo / "models" / "c8")]) == 2   # not a backdoor: one line
    err = capsys.readouterr().err
    assert err.startswith("error:") and "backdoor.json" in err and len(err.strip().splitlines()) == 1
    assert tf.main(args + ["--models", "c8"]) == 2
    assert "not a built backdoored dev model: c8" in capsys.readouterr().err
