"""pdfast calibrate / pdfast.calibrate: a detection threshold calibrated end to end on a clean and a backdoored tiny
model, written to the file the user names and read back by detect (--calibration FILE); its help; and bad input
(one 'error:' line, exit code 2, nothing written)."""
import json
import math

import pytest
import torch

import pdfast
from _cli import fails, ok
from pdfast.cli import main
from pdfast.errors import PdfastError

RUN = ["--steps", "2", "--scales", "analytic", "--epochs", "2", "--batch", "4", "--n-eval", "4"]
QUIET = ["--no-progress", "--device", "cpu"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A clean tiny model trained by `pdfast train` (schedule cut to T = 20: fast chains) and its BadDiffusion copy
    made by `pdfast attack`."""
    root = tmp_path_factory.mktemp("calibrate")
    clean, bad = root / "clean", root / "bad"
    ok(["train", "--arch", "tiny", "--size", 8, "--steps", 3, "--batch", 4, "--n-images", 16, "--out", clean, *QUIET])
    cfg_file = clean / "scheduler" / "scheduler_config.json"
    cfg_file.write_text(json.dumps({**json.loads(cfg_file.read_text()), "num_train_timesteps": 20}))
    ok(["attack", "baddiffusion", "--model", clean, "--trigger", "BOX_14", "--target", "HAT", "--steps", 3,
        "--batch", 4, "--n-images", 16, "--warmup", 1, "--out", bad, *QUIET])
    return {"root": root, "clean": clean, "bad": bad}


def test_calibrate_then_detect_reads_the_file(models, tmp_path):
    """The threshold is placed between the models' statistics (geometric mean of the lowest clean value and the
    backdoored one when it is below, else half the lowest clean one) and written per image size; detect --calibration FILE judges with that threshold, and its value for
    the backdoored model is the one measured while calibrating (same settings, same numbers)."""
    cal = tmp_path / "cal" / "my-calibration.json"
    r = ok(["calibrate", "--clean", models["clean"], "--backdoored", models["bad"], *RUN, "--out", cal, "--json",
            *QUIET])
    entry = json.loads(r.stdout)
    stat = entry["statistic"]
    assert stat == "trigger_miss"  # verdict v2's statistic, the default
    rows = {row["label"]: row for row in entry["models"]}
    lo, hi = rows["clean"][stat], rows["backdoored"][stat]
    want = math.sqrt(lo * hi) if hi < lo else lo / 2
    assert entry["threshold"] == pytest.approx(want, rel=1e-12) and entry["separated"] == (hi < lo)
    assert entry["settings"] == {"method": "puredif", "steps": 2, "sample_size": 8, "n_eval": 4, "eval_steps": 20,
                                 "clip_sample": False, "preset": "pdfast", "scales": "analytic", "seed": 0}
    assert rows["clean"]["architecture"]["class"] == "UNet2DModel" and rows["clean"]["architecture"]["parameters"] > 0
    written = json.loads(cal.read_text())
    assert written["by_size"]["8"]["threshold"] == written["threshold"] == entry["threshold"]

    out = tmp_path / "det"
    r = ok(["detect", "--model", models["bad"], *RUN, "--calibration", cal, "--out", out, "--json", *QUIET])
    det = json.loads(r.stdout)["metrics"]["detection"]
    assert det["threshold"] == entry["threshold"] and det["calibration_file"] == str(cal)
    assert det["threshold_source"] == entry["provenance"] and det["calibration_mismatch"] is None
    assert det["value"] == rows["backdoored"][stat]
    assert det["verdict"] == ("backdoored" if det["value"] < entry["threshold"] else "clean")

    # other settings than the calibration's are named; the shipped calibration is not the one read
    given = pdfast.detect(str(models["bad"]), trigger=torch.zeros(3, 8, 8), n_eval=4, calibration=str(cal))
    assert given.inversion.metrics["detection"]["threshold"] == entry["threshold"]
    other = pdfast.detect(str(models["bad"]), trigger=torch.zeros(3, 8, 8), n_eval=5, calibration=str(cal))
    assert other.inversion.metrics["detection"]["calibration_mismatch"] == {"n_eval": {"calibration": 4, "run": 5}}
    # the verdict's chain is part of what a threshold holds for (these models' T = 20: the default 100 is all 20)
    chain = pdfast.detect(str(models["bad"]), trigger=torch.zeros(3, 8, 8), n_eval=4, eval_steps=10,
                          calibration=str(cal))
    assert chain.inversion.metrics["detection"]["calibration_mismatch"] == {
        "eval_steps": {"calibration": 20, "run": 10}}


def test_library_calibrate_from_code_and_merging_sizes(models, tmp_path):
    """pdfast.calibrate takes the CLI's options as keywords and gives the CLI's numbers; writing into an existing
    calibration file adds this size and keeps the others."""
    from pdfast.calibration import merged

    kw = dict(steps=2, scales="analytic", epochs=2, batch=4, n_eval=4)
    res = pdfast.calibrate([str(models["clean"])], statistic="pattern_uniformity_q25", **kw)
    assert res.file is None and res.statistic == "pattern_uniformity_q25" and res.separated is None
    assert res.threshold == res.models[0]["pattern_uniformity_q25"] / 2
    f = tmp_path / "cal.json"
    f.write_text(json.dumps({"statistic": "pattern_uniformity", "threshold": 0.3, "settings": {"sample_size": 16},
                             "by_size": {"16": {"statistic": "pattern_uniformity", "threshold": 0.3}}}))
    again = pdfast.calibrate([str(models["clean"])], out=f, statistic="pattern_uniformity_q25", **kw)
    assert again.threshold == res.threshold and again.file == f
    both = json.loads(f.read_text())
    assert both["threshold"] == 0.3 and both["by_size"]["16"]["threshold"] == 0.3
    assert both["by_size"]["8"]["threshold"] == res.threshold
    assert merged(None, res.entry)["by_size"]["8"] == res.entry
    top16 = {"statistic": "pattern_uniformity", "threshold": 0.3, "settings": {"sample_size": 16}}
    again16 = merged(merged(None, top16), dict(top16, threshold=0.1))  # the top level's own size: replaced
    assert again16["threshold"] == again16["by_size"]["16"]["threshold"] == 0.1


def test_calibrate_help_and_options_from_one_definition():
    from pdfast.config import CalibrationConfig, DetectionConfig, InversionConfig, option_names

    r = ok(["calibrate", "--help"])
    for flag in ("--clean", "--backdoored", "--statistic", "--out", "--calibration", "--steps", "--dtype",
                 "--clip-sample", "--n-eval", "--pattern-rms"):
        assert flag in r.output, flag
    assert "--threshold" not in r.output
    params = {p.name for p in main.commands["calibrate"].params if p.name != "help"}
    names = set(option_names(CalibrationConfig, InversionConfig, DetectionConfig)) - {"threshold"}
    assert params == names | {"out", "device", "as_json", "progress"}
    assert "--calibration" in ok(["invert", "--help"]).output and "--calibration" in ok(["detect", "--help"]).output


def test_bad_input_is_one_line_and_writes_nothing(models, tmp_path):
    cal = tmp_path / "cal.json"
    assert "no clean model" in fails(["calibrate", "--backdoored", models["bad"], "--out", cal, *QUIET], cal)
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    assert "not-a-model" in fails(["calibrate", "--clean", empty, "--out", cal, *QUIET], cal)
    msg = fails(["calibrate", "--clean", models["clean"], "--out", "/proc/no/cal.json", *QUIET])
    assert "cannot be written" in msg
    other = tmp_path / "notes.json"
    other.write_text('{"hello": 1}')
    msg = fails(["calibrate", "--clean", models["clean"], "--out", other, *QUIET])
    assert "is not a calibration file" in msg and other.read_text() == '{"hello": 1}'
    # a file named with --calibration is read before any work
    for bad_cal, words in ((other, "is not a calibration file"), (tmp_path / "missing.json", "no such file")):
        for verb in ("invert", "detect"):
            out = tmp_path / f"{verb}-out"
            assert words in fails([verb, "--model", models["clean"], "--calibration", bad_cal, "--out", out, *QUIET],
                                  out)
    with pytest.raises(PdfastError, match="'threshold' has no effect when calibrating"):
        pdfast.calibrate([str(models["clean"])], threshold=0.1)


def test_one_image_size_per_calibration(tiny_unet):
    from diffusers import UNet2DModel

    from pdfast.model import DiffusionModel
    from pdfast.schedule import Schedule

    sched = Schedule.from_config({"clip_sample": False})
    big = UNet2DModel(sample_size=16, in_channels=3, out_channels=3, block_out_channels=(4, 8), layers_per_block=1,
                      down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                      norm_num_groups=4)
    with pytest.raises(PdfastError, match="image sizes 8, 16"):
        pdfast.calibrate([DiffusionModel(tiny_unet, sched, 8), DiffusionModel(big, sched, 16)])


def test_place_threshold_keeps_every_clean_model_clean_and_catches_what_it_can():
    from pdfast.calibration import place_threshold

    assert place_threshold([1.0, 0.9], [0.1, 0.4]) == (pytest.approx(math.sqrt(0.9 * 0.4)), True)
    # a backdoored model above every clean one (its trigger never fired) cannot be caught without a false positive:
    # the threshold still separates the rest
    assert place_threshold([1.0, 0.9], [0.4, 1.2]) == (pytest.approx(math.sqrt(0.9 * 0.4)), False)
    assert place_threshold([1.0, 0.9], [1.1, 1.2]) == (pytest.approx(0.45), False)
    assert place_threshold([1.0, 0.9], []) == (pytest.approx(0.45), None)
    assert place_threshold([1.0], [0.0]) == (pytest.approx(0.5), True)
