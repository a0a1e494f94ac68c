"""research/asr_threshold.py: the separation rule by hand, and the script end to end on the micro zoo (resume, outputs)."""
import json

import asr_threshold as at


def test_separation_by_hand():
    units = {"m": {"truth": {"mse": [0.01, 0.01, 0.04, 0.2]}, "flat-1": {"mse": [0.06, 0.06, 0.06, 0.06]},
                   "zeros": {"mse": [0.3, 0.3, 0.03, 0.3]}}}
    rows = {r["threshold"]: r for r in at.summarize(units, thresholds=(0.1, 0.05, 0.02))}
    # at 0.1 the dark frame fires 4/4 beside the truth's 3/4; at 0.05 the truth 3/4 beats 0/4 and 1/4; at 0.02 the
    # truth fires 2/4 and zeros 0/4: still separated (>= 0.5 and above every other)
    assert not rows[0.1]["separates"] and rows[0.1]["best_other"] == "flat-1" and rows[0.1]["best_other_asr"]["k"] == 4
    assert rows[0.05]["separates"] and rows[0.05]["truth_asr"]["k"] == 3 and rows[0.05]["best_other"] == "zeros"
    assert rows[0.02]["separates"] and rows[0.02]["truth_asr"]["k"] == 2
    assert at.summarize({"m": {"truth": {"mse": [0.2, 0.2]}}}, (0.1,))[0]["separates"] is False  # below 0.5


def test_flat_part_is_the_per_channel_mean():
    import torch

    g = torch.stack([torch.full((4, 4), -1.0), torch.zeros(4, 4), torch.ones(4, 4)])
    g[:, :2, :2] = 0.5
    f = at.trigger_tensor("flat-g", g)
    assert f.shape == g.shape and torch.allclose(f[:, 0, 0], g.mean(dim=(1, 2)))
    assert torch.equal(f.amin(dim=(1, 2)), f.amax(dim=(1, 2)))


def test_end_to_end_on_the_micro_zoo(micro_zoo, capsys):
    args = ["--zoo", str(micro_zoo / "models"), "--cache", str(micro_zoo / "at-cache"), "--out",
            str(micro_zoo / "at"), "--n", "4"]
    assert at.main(args) == 0
    obj = json.loads((micro_zoo / "at.json").read_text())
    assert set(obj["units"]) == {"bd8"} and set(obj["units"]["bd8"]) == set(at.TRIGGERS)
    assert all(len(u["mse"]) == 4 for u in obj["units"]["bd8"].values())
    assert len(obj["rows"]) == len(at.THRESHOLDS) and "# ASR thresholds on the dev backdoors" in \
        (micro_zoo / "at.md").read_text()
    capsys.readouterr()
    assert at.main(args) == 0                                          # cached: nothing is sampled again
    assert " ..." not in capsys.readouterr().err
    assert at.main(args[:-2] + ["--n", "4", "--models", "c8"]) == 2    # a clean model is not a backdoor
    assert "not a built backdoored dev model: c8" in capsys.readouterr().err
