"""The command line end to end on tiny models: train -> attack -> sample -> evaluate, help texts, and errors
(exit code 2, one 'error:' line on stderr, no traceback, no output left behind)."""
import json
import subprocess
import sys

import click
import pytest
import torch

from _cli import fails, ok
from pdfast.cli import main

FAST = ["--json", "--no-progress", "--device", "cpu"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A clean tiny model D trained by `pdfast train` (its schedule cut to T = 20 so chains are fast) and D2, its
    BadDiffusion copy made by `pdfast attack`."""
    root = tmp_path_factory.mktemp("cli")
    d, d2 = root / "D", root / "D2"
    r = ok(["train", "--arch", "tiny", "--size", 8, "--steps", 3, "--batch", 4, "--n-images", 16, "--out", d, *FAST])
    info = json.loads(r.stdout)
    cfg_file = d / "scheduler" / "scheduler_config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["num_train_timesteps"] = 20
    cfg_file.write_text(json.dumps(cfg))
    r2 = ok(["attack", "baddiffusion", "--model", d, "--trigger", "BOX_14", "--target", "HAT", "--steps", 3,
             "--batch", 4, "--n-images", 16, "--warmup", 1, "--out", d2, *FAST])
    return {"root": root, "D": d, "D2": d2, "train": info, "attack": json.loads(r2.stdout)}


def test_train_and_attack_outputs(models):
    d, d2 = models["D"], models["D2"]
    t = models["train"]
    assert t["out"] == str(d) and t["arch"] == "tiny" and t["size"] == 8 and t["data"] == "procedural"
    assert t["n_images"] == 16 and t["config"]["steps"] == 3 and t["config"]["warmup"] == 3  # warm-up capped at steps
    for f in ("model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
              "scheduler/scheduler_config.json"):
        assert (d / f).is_file() and (d2 / f).is_file(), f
    assert not (d / "backdoor.json").exists()
    bd = json.loads((d2 / "backdoor.json").read_text())
    assert {k: bd[k] for k in ("attack", "trigger", "target", "poison_rate", "steps", "seed")} == {
        "attack": "baddiffusion", "trigger": "BOX_14", "target": "HAT", "poison_rate": 0.1, "steps": 3, "seed": 0}
    assert (d2 / "backdoor.safetensors").is_file()
    assert models["attack"]["out"] == str(d2) and models["attack"]["trigger"] == "BOX_14"
    assert json.loads((d2 / "scheduler" / "scheduler_config.json").read_text())["num_train_timesteps"] == 20

    from pdfast.loading import load_model

    a, b = load_model(d), load_model(d2)
    assert a.schedule.T == 20 and b.schedule.T == 20 and b.backdoor["target"] == "HAT"
    wa, wb = a.net.state_dict(), b.net.state_dict()
    assert any(not torch.equal(wa[k], wb[k]) for k in wa)


def test_sample(models, tmp_path):
    from PIL import Image

    out = tmp_path / "x.png"
    ok(["sample", "--model", models["D2"], "-n", 2, "--trigger", "truth", "--out", out, "--no-progress", "--device", "cpu"])
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size == ((2 * 9 + 1) * 4, (1 * 9 + 1) * 4)
    r = ok(["sample", "--model", models["D"], "-n", 1, "--trigger", "BOX_14", "--out", tmp_path / "y.png", *FAST])
    assert json.loads(r.stdout) == {"out": str(tmp_path / "y.png"), "n": 1, "trigger": "BOX_14", "seed": 0}


def test_evaluate(models, tmp_path):
    r = ok(["evaluate", "--model", models["D2"], "-n", 2, *FAST])
    rep = json.loads(r.stdout)
    assert rep["trigger"] == "truth" and rep["n"] == 2 and rep["l2"] == 0.0
    for k in ("asr", "uniformity", "uniformity_trimmed", "kl_mean", "clean_uniformity"):
        assert isinstance(rep[k], float), k
    r = ok(["evaluate", "--model", models["D2"], "-n", 2, "--trigger", "BOX_18", "--no-clean", "--out", tmp_path / "ev",
            *FAST])
    rep = json.loads(r.stdout)
    assert rep["l2"] > 0 and "clean_uniformity" not in rep
    assert (tmp_path / "ev" / "metrics.json").is_file() and (tmp_path / "ev" / "samples.png").is_file()


def test_env():
    info = json.loads(ok(["env", "--json"]).stdout)
    assert info["pdfast"] and info["torch"] == torch.__version__
    assert isinstance(info["cuda_available"], bool) and isinstance(info["triton_usable"], bool)
    assert "torch" in ok(["env"]).output


def _expects_default(p: click.Option) -> bool:
    if p.required or p.default is None or p.hidden or not p.expose_value:  # --help, --version
        return False
    if p.multiple and p.default in (None, (), [], getattr(click.core, "UNSET", None)):  # given once per value
        return False
    return not (p.is_flag and not p.secondary_opts and not p.default)  # a plain off-by-default flag shows none


def test_help_lists_defaults():
    parent = click.Context(main, info_name="pdfast", **main.context_settings)
    assert ok(["--help"]).output.count("Commands:") == 1
    for name, cmd in main.commands.items():
        text = ok([name, "--help"]).output
        ctx = click.Context(cmd, parent=parent, info_name=name)
        wanted = 0
        for p in cmd.get_params(ctx):
            if not isinstance(p, click.Option):
                continue
            rec = p.get_help_record(ctx)
            assert rec is not None and p.opts[-1] in text, (name, p.name)
            if _expects_default(p):
                wanted += 1
                assert "default:" in rec[1], (name, p.name, rec)
        assert ("default:" in text) == (wanted > 0), name


def test_entry_point_subprocess():
    r = subprocess.run([sys.executable, "-m", "pdfast.cli", "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "Usage:" in r.stdout and "train" in r.stdout and "Traceback" not in r.stderr


def test_entry_point_error_subprocess(tmp_path):
    """The real process: exit 2 and exactly one stderr line (no warnings or traceback around it)."""
    out = tmp_path / "x.png"
    r = subprocess.run([sys.executable, "-m", "pdfast.cli", "sample", "--model", str(tmp_path / "missing"), "--out",
                        str(out)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: missing model folder"), r.stderr
    assert not out.exists()


def test_errors(models, tmp_path):
    d, png = models["D"], tmp_path / "x.png"
    msg = fails(["sample", "--model", tmp_path / "missing", "--out", png], png)
    assert "missing" in msg
    fails(["evaluate", "--model", tmp_path / "missing", "-n", 2, "--out", tmp_path / "ev"], tmp_path / "ev")
    msg = fails(["attack", "baddiffusion", "--model", d, "--trigger", "NO_SUCH_TRIGGER", "--target", "HAT",
                 "--out", tmp_path / "o", "--no-progress"], tmp_path / "o")
    assert "NO_SUCH_TRIGGER" in msg
    fails(["sample", "--model", d, "--trigger", "NO_SUCH_TRIGGER", "--out", png], png)
    fails(["sample", "--model", d, "--trigger", "truth", "--out", png], png)  # a clean model has no ground truth
    fails(["sample", "--model", d, "--out", tmp_path / "x.jpg"], tmp_path / "x.jpg")
    fails(["sample", "--model", d, "-n", 0, "--out", png], png)
    fails(["evaluate", "--model", d, "-n", 1], )
    fails(["train", "--size", 10, "--out", tmp_path / "t"], tmp_path / "t")
    fails(["train", "--size", 8, "--steps", 0, "--out", tmp_path / "t"], tmp_path / "t")
    msg = fails(["attack", "baddiffusion", "--model", d, "--trigger", "BOX_14", "--target", "HAT", "--poison-rate", 0,
                 "--out", tmp_path / "o", "--no-progress", "--device", "cpu"], tmp_path / "o")
    assert "poison rate" in msg
    (tmp_path / "empty").mkdir()
    fails(["train", "--arch", "tiny", "--size", 8, "--data", tmp_path / "empty", "--out", tmp_path / "t",
           "--no-progress", "--device", "cpu"], tmp_path / "t")
    fails(["attack", "baddiffusion", "--model", d, "--trigger", "BOX_14", "--target", "HAT",
           "--data", tmp_path / "empty", "--out", tmp_path / "o", "--no-progress", "--device", "cpu"], tmp_path / "o")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]  # no temporary folders either


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_cuda_without_gpu(models, tmp_path):
    fails(["train", "--arch", "tiny", "--size", 8, "--device", "cuda", "--out", tmp_path / "t"], tmp_path / "t")
    fails(["sample", "--model", models["D"], "--device", "cuda", "--out", tmp_path / "x.png"], tmp_path / "x.png")


# ---------- --out checked before any work; outputs shareable, labelled, and never lost ----------

import os  # noqa: E402
import stat  # noqa: E402
from pathlib import Path  # noqa: E402


@pytest.fixture
def no_work(monkeypatch):
    """The first step of every command's work records its call here instead of running: loading a model (invert,
    detect, evaluate, sample, attack), getting data or building a network (train), drawing a pattern (preview)."""
    import pdfast.data
    import pdfast.loading
    import pdfast.patterns
    import pdfast.train

    calls = []
    for mod, name in ((pdfast.loading, "load_model"), (pdfast.data, "get_data"), (pdfast.train, "make_unet"),
                      (pdfast.train, "train_ddpm"), (pdfast.patterns, "load_pattern")):
        monkeypatch.setattr(mod, name, lambda *a, _n=name, **k: calls.append(_n))
    return calls


def test_unwritable_out_fails_before_any_work(tmp_path, no_work):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    bads = [blocker / "out", blocker] + (["/proc/forbidden/x"] if os.path.isdir("/proc/self") else [])
    for out in bads:
        for args in (["invert"], ["detect"], ["train", "--arch", "tiny", "--size", 8],
                     ["attack", "baddiffusion", "--trigger", "BOX_14", "--target", "HAT"], ["evaluate", "-n", 2]):
            msg = fails([*args, "--out", out, "--no-progress", "--device", "cpu"])
            assert str(out) in msg and ("cannot be written" in msg or "is a file" in msg), (args, msg)
        for args in (["sample"], ["preview", "BOX_14"]):
            png = Path(out) / "x.png"
            msg = fails([*args, "--out", png])
            assert str(png) in msg and "cannot be written" in msg, (args, msg)
    msg = fails(["sample", "--out", tmp_path])
    assert msg == f"error: --out {tmp_path} is a folder; give a file path"
    assert no_work == []  # no model loaded, nothing trained, inverted, sampled or drawn
    assert [p.name for p in tmp_path.iterdir()] == ["file"] and blocker.read_text() == "x"


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc")
def test_unwritable_out_subprocess():
    """The user's report: `pdfast invert --out /proc/forbidden/x` ran minutes, then a traceback. Now: at once,
    exit 2, one line."""
    r = subprocess.run([sys.executable, "-m", "pdfast.cli", "invert", "--out", "/proc/forbidden/x"],
                       capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 2 and r.stdout == "", r
    assert r.stderr == ("error: --out /proc/forbidden/x cannot be written (No such file or directory: "
                        "/proc/forbidden); choose a folder you can create and write to\n"), r.stderr


def _mode(p):
    return stat.S_IMODE(os.stat(p).st_mode)


def _label_strip_is_inked(png, panels):
    """trigger.png: at least 400 px wide, a label strip over the panels with dark text over each one."""
    import numpy as np
    from PIL import Image

    with Image.open(png) as im:
        arr = np.asarray(im.convert("RGB"))
    assert arr.shape[1] >= 400, arr.shape
    scale = arr.shape[1] // (panels * 9 + 1)  # 8 px panels, 1 px (upscaled) padding
    assert arr.shape[1] == scale * (panels * 9 + 1)
    strip = arr.shape[0] - 10 * scale
    assert strip >= 16, arr.shape
    for i in range(panels):
        x0 = (1 + i * 9) * scale
        assert (arr[:strip, x0:x0 + 8 * scale].min(-1) < 100).sum() > 30, i


def test_outputs_are_shareable_and_labelled(models, tmp_path):
    old = os.umask(0o022)
    try:
        out = tmp_path / "det"
        r = ok(["detect", "--model", models["D2"], "--trigger", "BOX_14", "--threshold", 10, "--out", out, *FAST])
    finally:
        os.umask(old)
    assert json.loads(r.stdout)["kind"] == "given-trigger"
    names = ["pattern_samples.png", "report.json", "samples.png", "trigger.png", "trigger.safetensors"]
    assert {p.name: _mode(p) for p in out.iterdir()} == dict.fromkeys(names, 0o644)
    assert _mode(out) == 0o755
    _label_strip_is_inked(out / "trigger.png", 3)  # given trigger, pattern, ground truth (D2 has backdoor.json)


def test_rescue_keeps_the_trigger_when_out_vanishes(models, tmp_path, monkeypatch):
    """The job succeeds, but --out's folder is gone (and a file took its place) when the outputs are written: they
    go to a rescue folder in the current folder, and the one error line says where."""
    import pdfast.report
    from safetensors.torch import load_file

    real_report, got = pdfast.report.inversion_report, {}

    def lose_the_folder_then_report(res):  # save_result builds the report just before it writes
        if "res" not in got:
            got["res"] = res
            (tmp_path / "runs" / "keep.txt").unlink()
            (tmp_path / "runs").rmdir()
            (tmp_path / "runs").write_text("not a folder any more")
        return real_report(res)

    monkeypatch.setattr(pdfast.report, "inversion_report", lose_the_folder_then_report)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "keep.txt").write_text("x")
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    out = tmp_path / "runs" / "inv"
    msg = fails(["invert", "--model", models["D2"], "--scales", "analytic", "--steps", 1, "--epochs", 1,
                 "--refine-epochs", 0, "--batch", 2, "--out", out, *FAST], out)
    [kept] = list((tmp_path / "cwd").iterdir())
    assert kept.name.startswith("pdfast-rescued-inv-")
    assert msg == (f"error: could not write the outputs to {out} (File exists: {tmp_path / 'runs'}); the result was "
                   f"kept in {kept} instead")
    assert sorted(p.name for p in kept.iterdir()) == ["pattern_samples.png", "report.json", "samples.png",
                                                      "trigger.png", "trigger.safetensors"]
    torch.testing.assert_close(load_file(str(kept / "trigger.safetensors"))["trigger"], got["res"].trigger.cpu())
    assert json.loads((kept / "report.json").read_text())["kind"] == "inversion"
    _label_strip_is_inked(kept / "trigger.png", 3)  # inverted, pattern, ground truth
