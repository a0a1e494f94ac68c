"""The library entry points as other defense tools call them: pdfast.invert / pdfast.detect, Ctrl-C, the verdict's
calibration fallback, and the surrogate-scale cache keyed by the data it was calibrated on."""
import json

import pytest
import torch
from click.testing import CliRunner

import pdfast
from pdfast.errors import PdfastError

FAST = dict(steps=2, scales="analytic", epochs=2, refine_epochs=1, batch=4, n_eval=4, patch_starts="none")


def test_detect_api_inverts_or_judges_a_given_trigger(tiny_model):
    det = pdfast.detect(tiny_model, **FAST)
    assert det.verdict in ("backdoored", "clean") and det.backdoored == (det.verdict == "backdoored")
    assert det.inversion.metrics["n_samples"] == 4 and len(det.inversion.losses) == 3
    # a given trigger: judged, not inverted; a huge threshold calls anything backdoored, a tiny one nothing
    g = torch.zeros(tiny_model.shape)
    hi = pdfast.detect(tiny_model, trigger=g, threshold=10.0, n_eval=4)
    lo = pdfast.detect(tiny_model, trigger=g, threshold=0.0, n_eval=4)
    assert hi.backdoored and not lo.backdoored and hi.inversion.given_trigger and hi.inversion.losses == []
    assert hi.inversion.metrics["detection"]["value"] == lo.inversion.metrics["detection"]["value"]
    # a zero trigger is its own flat part and plain noise: it cannot fire (verdict v2's statistic is exactly 0)
    assert hi.inversion.metrics["trigger_fires"] == 0.0 and hi.inversion.metrics["trigger_miss"] == 1.0
    with pytest.raises(PdfastError, match="'epochs' has no effect when a trigger is given"):
        pdfast.detect(tiny_model, trigger=g, epochs=5)
    with pytest.raises(PdfastError, match="the model needs"):
        pdfast.detect(tiny_model, trigger=torch.zeros(3, 5, 5))


def test_invert_options_apply_over_a_config_and_unknown_ones_are_refused(tiny_model):
    from pdfast.config import InversionConfig

    cfg = InversionConfig(steps=2, scales="analytic", epochs=3, batch=4, refine_epochs=0, patch_starts="none")
    res = pdfast.invert(tiny_model, config=cfg, epochs=1, evaluate=False)
    assert res.config.epochs == 1 and res.config.steps == 2 and len(res.losses) == 1
    with pytest.raises(PdfastError, match="unknown option 'kernel'"):
        pdfast.invert(tiny_model, config=cfg, kernel="x", evaluate=False)
    with pytest.raises(PdfastError, match="fast engine only"):
        pdfast.invert(tiny_model, config=cfg, engine="reference", dtype="bfloat16", evaluate=False)


def test_ctrl_c_keeps_the_trigger_and_exits_130(tmp_path, monkeypatch):
    """Ctrl-C during the optimisation: the trigger so far is written, the report says interrupted, exit code 130."""
    from test_inversion import _tiny_backdoored_folder

    from pdfast.cli import main
    from pdfast.engine.fast import FastEngine

    b = _tiny_backdoored_folder(tmp_path)
    real = FastEngine.loss_and_grad
    calls = []

    def interrupt_on_third(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(FastEngine, "loss_and_grad", interrupt_on_third)
    out = tmp_path / "inv"
    res = CliRunner().invoke(main, ["invert", "--model", str(b), "--steps", "2", "--scales", "analytic", "--epochs",
                                    "5", "--batch", "2", "--out", str(out), "--no-progress", "--device", "cpu"])
    assert res.exit_code == 130, res.output
    rep = json.loads((out / "report.json").read_text())
    assert rep["interrupted"] is True and len(rep["loss"]["history"]) == 2
    assert (out / "trigger.safetensors").is_file()


def test_missing_calibration_falls_back_to_the_same_statistic(tmp_path, tiny_model, monkeypatch):
    from pdfast import detection

    shipped = detection.calibration()
    fallback = detection.calibration(tmp_path / "missing.json")
    assert fallback["statistic"] == shipped["statistic"] == "trigger_miss"
    assert "uncalibrated" in fallback["provenance"]
    monkeypatch.setattr(detection, "CALIBRATION_FILE", tmp_path / "missing.json")
    det = pdfast.detect(tiny_model, trigger=torch.zeros(tiny_model.shape), n_eval=4).inversion.metrics["detection"]
    assert det["statistic"] == "trigger_miss" and det["threshold"] == fallback["threshold"]
    assert det["threshold_source"].startswith("uncalibrated")


def test_surrogate_cache_is_keyed_by_the_data_folder(tmp_path, tiny_model, monkeypatch):
    """Two --data folders (or one whose files changed) never share a cached lambda table."""
    from dataclasses import replace

    from PIL import Image

    from pdfast.config import SurrogateConfig
    from pdfast.scales import resolve_scales

    monkeypatch.setenv("PDFAST_CACHE_DIR", str(tmp_path / "cache"))
    folders = []
    for i, colour in enumerate([(200, 30, 30), (30, 30, 200)]):
        f = tmp_path / f"data{i}"
        f.mkdir()
        for j in range(4):
            Image.new("RGB", (8, 8), tuple(min(255, c + 10 * j) for c in colour)).save(f / f"{j}.png")
        folders.append(f)
    sc = replace(SurrogateConfig(), steps=2, calib_batch=4, batch=4)
    a = resolve_scales(tiny_model, 2, "surrogate", surrogate=replace(sc, data=str(folders[0])))
    b = resolve_scales(tiny_model, 2, "surrogate", surrogate=replace(sc, data=str(folders[1])))
    again = resolve_scales(tiny_model, 2, "surrogate", surrogate=replace(sc, data=str(folders[0])))
    assert not a.cached and not b.cached and again.cached
    assert a.info["cache_file"] != b.info["cache_file"]
    Image.new("RGB", (8, 8), (0, 255, 0)).save(folders[0] / "new.png")
    assert not resolve_scales(tiny_model, 2, "surrogate", surrogate=replace(sc, data=str(folders[0]))).cached


def test_clip_sample_option_changes_the_chain_not_the_callers_model(tiny_model, tmp_path, monkeypatch):
    """--clip-sample on/off overrides the scheduler config for the run only, as a setting of the sampler: the chain
    differs (other losses once the clipped x0 bites, a surrogate table cached apart), while the model, its hash and
    the caller's schedule stay as they are."""
    from dataclasses import replace

    from pdfast.config import SurrogateConfig
    from pdfast.scales import resolve_scales

    assert tiny_model.schedule.clip_sample is False
    opts = dict(steps=3, scales="analytic", epochs=2, refine_epochs=0, batch=4, evaluate=False, loss_steps="all")
    off = pdfast.invert(tiny_model, clip_sample="off", **opts)
    auto = pdfast.invert(tiny_model, **opts)
    on = pdfast.invert(tiny_model, clip_sample="on", **opts)
    assert off.model_hash == auto.model_hash == on.model_hash == tiny_model.content_hash()
    assert off.losses == auto.losses and on.losses != off.losses
    assert tiny_model.schedule.clip_sample is False
    with pytest.raises(PdfastError, match="unknown clip sample 'maybe'"):
        pdfast.invert(tiny_model, clip_sample="maybe", **opts)
    monkeypatch.setenv("PDFAST_CACHE_DIR", str(tmp_path / "cache"))
    sc = replace(SurrogateConfig(), steps=2, calib_batch=4, batch=4, n_images=4, pool_steps=2)
    plain = resolve_scales(tiny_model, 2, surrogate=sc)
    clipped = resolve_scales(tiny_model, 2, surrogate=sc, clip_sample=True)
    assert not clipped.cached and clipped.info["cache_file"] != plain.info["cache_file"]
    assert resolve_scales(tiny_model, 2, surrogate=sc, clip_sample=False).cached  # the config's own: the plain key


def test_paper_preset_and_explicit_options_over_it():
    """--preset paper is the paper's PureDiffusion (fresh noise, eq. 17 as printed, no refinement); an option given
    explicitly wins over the preset; Elijah is unaffected."""
    from pdfast.config import InversionConfig

    keys = ("noise", "objective", "norm", "refine_epochs", "bounds", "epochs", "batch")

    def of(c):
        return tuple(getattr(c, k) for k in keys)

    paper = InversionConfig.from_options(preset="paper").resolved()
    assert of(paper) == ("fresh", "absolute", "l1", 0, "none", 30, 40)
    mine = InversionConfig().resolved()
    assert of(mine) == ("antithetic", "relative", "l2", 30, "image", 30, 40)
    assert mine.clip_sample == "off" and mine.select == "firing" and mine.refine_from == "pattern"
    assert paper.select == "last"
    v01 = InversionConfig.from_options(preset="v0.1").resolved()
    assert v01.select == "last"
    assert of(v01) == ("antithetic", "relative", "l1", 30, "none", 30, 40) and v01.refine_from == "pattern"
    eli = InversionConfig.from_options(method="elijah").resolved()
    assert of(eli) == ("fixed", "absolute", "l1", 0, "none", 100, 100) and eli.steps == 1
    mixed = InversionConfig.from_options(preset="paper", refine_epochs=5, noise="antithetic").resolved()
    assert (mixed.noise, mixed.objective, mixed.refine_epochs) == ("antithetic", "absolute", 5)
    assert InversionConfig.from_options(preset="paper", method="elijah").resolved().noise == "fixed"
    with pytest.raises(PdfastError, match="unknown preset 'fast'"):
        InversionConfig.from_options(preset="fast").resolved()


def test_cli_detect_with_a_trigger_refuses_inversion_flags(tmp_path):
    from test_inversion import _tiny_backdoored_folder

    from pdfast.cli import main

    b = _tiny_backdoored_folder(tmp_path)
    res = CliRunner().invoke(main, ["detect", "--model", str(b), "--trigger", "BOX_14", "--epochs", "3",
                                    "--out", str(tmp_path / "d"), "--no-progress", "--device", "cpu"])
    assert res.exit_code == 2 and "'epochs' has no effect when a trigger is given" in res.output
    assert "Traceback" not in res.output and not (tmp_path / "d").exists()


def test_verdict_reports_its_margin_and_a_calibration_made_for_other_settings(tmp_path, tiny_model, monkeypatch,
                                                                              caplog):
    import math

    from pdfast import detection

    cal = tmp_path / "cal.json"
    cal.write_text(json.dumps({"statistic": "pattern_uniformity", "threshold": 0.05, "provenance": "test",
                               "settings": {"method": "puredif", "steps": 10, "sample_size": 32}}))
    monkeypatch.setattr(detection, "CALIBRATION_FILE", cal)
    with caplog.at_level("WARNING", logger="pdfast.detection"):
        det = pdfast.detect(tiny_model, trigger=torch.zeros(tiny_model.shape), n_eval=4).inversion.metrics
    d = det["detection"]
    assert d["calibration_mismatch"] == {"sample_size": {"calibration": 32, "run": 8}}
    assert "calibrated with other settings" in caplog.text and "sample_size 32 vs 8" in caplog.text
    assert d["margin"] == pytest.approx(math.log(d["value"] / 0.05))
    assert (d["margin"] < 0) == (d["verdict"] == "backdoored")
    with caplog.at_level("WARNING", logger="pdfast.detection"):
        caplog.clear()
        same = pdfast.detect(tiny_model, trigger=torch.zeros(tiny_model.shape), n_eval=4, threshold=0.2)
    assert "calibrated with other settings" not in caplog.text  # an explicit threshold is the user's choice
    assert same.inversion.metrics["detection"]["threshold"] == 0.2


def test_calibration_per_image_size(tmp_path):
    """A calibration file may hold one threshold per image size; a size it lacks gets the top-level one."""
    from pdfast.detection import calibration

    f = tmp_path / "cal.json"
    f.write_text(json.dumps({"statistic": "pattern_uniformity", "threshold": 0.2, "settings": {"sample_size": 16},
                             "by_size": {"32": {"statistic": "pattern_uniformity_q25", "threshold": 0.05,
                                                "settings": {"sample_size": 32}}}}))
    assert calibration(f, sample_size=32)["threshold"] == 0.05
    assert calibration(f, sample_size=16)["threshold"] == 0.2
    assert calibration(f, sample_size=64)["threshold"] == 0.2
    assert calibration(f)["threshold"] == 0.2


def test_verdict_pattern_energy_comes_from_the_calibration(tmp_path, monkeypatch):
    """The verdict's pattern is scaled to the rms its size's calibration was made with; an explicit pattern_rms wins;
    without either it keeps the trigger's energy (metrics.trigger_pattern)."""
    from pdfast import detection, metrics

    f = tmp_path / "cal.json"
    f.write_text(json.dumps({"statistic": "pattern_uniformity", "threshold": 0.2, "settings": {"sample_size": 16},
                             "pattern_rms": 0.25}))
    monkeypatch.setattr(detection, "CALIBRATION_FILE", f)
    trig = -torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(0))
    p, rms = detection.verdict_pattern(trig, 16)
    assert rms == 0.25 and abs(float(p.pow(2).mean().sqrt()) - 0.25) < 1e-6
    p2, rms2 = detection.verdict_pattern(trig, 16, pattern_rms=0.5)
    assert rms2 == 0.5 and abs(float(p2.pow(2).mean().sqrt()) - 0.5) < 1e-6
    torch.testing.assert_close(p2, 2 * p)  # the same pattern, only its energy differs
    f.write_text(json.dumps({"statistic": "pattern_uniformity", "threshold": 0.2}))
    p3, rms3 = detection.verdict_pattern(trig, 16)
    assert rms3 is None
    torch.testing.assert_close(p3, metrics.trigger_pattern(trig))
    assert abs(float(p3.pow(2).mean().sqrt()) - float(trig.pow(2).mean().sqrt())) < 1e-6


def test_engine_options_reach_the_surrogate_calibration_and_the_verdict(tiny_model, tmp_path, monkeypatch):
    """--dtype (like every engine option) applies to every chain of a run, each made where it is used: the
    surrogate's image pool and lambda estimate (a bf16 table, cached apart from the fp32 one), the inversion and the
    verdict's sampling."""
    monkeypatch.setenv("PDFAST_CACHE_DIR", str(tmp_path / "cache"))
    opts = dict(steps=2, epochs=1, batch=4, n_eval=4, surrogate_steps=2, surrogate_calib_batch=4, surrogate_batch=4,
                surrogate_n_images=4, surrogate_pool_steps=2)
    fp32 = pdfast.invert(tiny_model, **opts)
    bf16 = pdfast.invert(tiny_model, dtype="bfloat16", **opts)
    assert fp32.inversion.engine["dtype"] == fp32.verdict.engine["dtype"] == "float32"
    assert bf16.inversion.engine["dtype"] == bf16.verdict.engine["dtype"] == "bfloat16"
    assert not bf16.scales.cached and bf16.scales.info["cache_file"] != fp32.scales.info["cache_file"]
    assert bf16.scales.info["cache_file"].endswith("-bfloat16.json")
    assert torch.isfinite(bf16.scales.values).all() and not torch.equal(bf16.scales.values, fp32.scales.values)


def test_the_pdfast_preset_adds_the_trojdiff_warm_start_for_trojdiff_models_only(tiny_model):
    """FAMILY_PRESETS: a TrojDiff model gets 300 warm steps at t = T on one fixed noise batch, then 300 on a fixed
    batch of antithetic pairs (docs/method.md 5.7),
    resolved once the model's family is known; other families and presets are unchanged; explicit options win."""
    from pdfast.config import InversionConfig
    from pdfast.model import DiffusionModel

    td = InversionConfig().resolved("trojdiff")
    assert (td.warm_epochs, td.polish_epochs, td.noise, td.patch_starts) == (300, 300, "fixed", "none")
    assert InversionConfig().resolved("baddiffusion").patch_starts == "grid"
    bd = InversionConfig().resolved("baddiffusion")
    assert (bd.warm_epochs, bd.polish_epochs, bd.noise) == (0, 0, "antithetic")
    assert InversionConfig().resolved().warm_epochs == 0
    assert InversionConfig.from_options(preset="v0.1").resolved("trojdiff").warm_epochs == 0
    assert InversionConfig.from_options(warm_epochs=2).resolved("trojdiff").warm_epochs == 2
    m = tiny_model
    trojan = DiffusionModel(m.net, m.schedule, m.sample_size, m.channels, m.source,
                            {"family": {"name": "trojdiff", "gamma": 0.6}}, dict(m.extra))
    opts = dict(steps=1, epochs=1, refine_epochs=0, batch=4, scales="analytic", evaluate=False, patch_starts="none")
    res = pdfast.invert(trojan, **opts)
    assert (res.config.warm_epochs, res.config.noise, res.config.patch_starts) == (300, "fixed", "none")
    assert res.inversion.timings["stages"] == {"warm": 300, "polish": 300, "search": 1}
    assert set(res.inversion.selection["fires"]) == {"search", "polish"}  # the polished trigger is a candidate
    assert pdfast.invert(m, **opts).inversion.timings["stages"] == {"search": 1}
