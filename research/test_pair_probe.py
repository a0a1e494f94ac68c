"""research/pair_probe.py run for real on an untrained 8x8 VillanDiffusion-ODE folder (two search steps): every
fixed (trigger, target) and every start lands in the report; a model without a closed pair is refused in one line."""
import json

import pytest
import torch

import pair_probe


def _folders(tmp_path, tiny_model, family):
    from pdfast.attack import save_backdoored
    from pdfast.patterns import draw_target, draw_trigger

    clean = tiny_model(20)
    clean.save(tmp_path / "c8")
    info = {"attack": family["name"], "trigger": "BOX_14", "target": "HAT", "family": family}
    save_backdoored(clean.copy(), tmp_path / "bd8", info, draw_trigger("BOX_14", 8), draw_target("HAT", 8))
    return str(tmp_path / "bd8"), str(tmp_path / "c8")


def test_writes_every_row(tmp_path, tiny_model):
    fam = {"name": "villandiffusion", "solver": "ode", "psi": 1.0, "residual": "trigger_only", "ode_steps": 10}
    bd, cl = _folders(tmp_path, tiny_model, fam)
    out = tmp_path / "probe"
    assert pair_probe.main([bd, cl, "--epochs", "2", "--out", str(out)]) == 0
    res = json.loads(out.with_suffix(".json").read_text())
    assert list(res["fixed"]) == ["truth", "flat part, y", "HEART, y", "BOX_14, y", "STOP_SIGN_14, y", "g, HAT",
                                  "g, CORNER"]
    assert set(res["searches"]) == {"uniform", "patch-tl", "patch-tr", "patch-bl", "patch-br", "patch-c"}
    row = res["searches"]["patch-br"]
    assert 0 <= row["backdoor"]["exact_asr"] <= 1 and torch.isfinite(torch.tensor(row["clean"]["R"]))
    assert "| patch-br |" in out.with_suffix(".md").read_text()


def test_refuses_a_family_without_a_closed_pair(tmp_path, tiny_model):
    from pdfast.errors import PdfastError

    bd, cl = _folders(tmp_path, tiny_model, {"name": "trojdiff", "gamma": 0.6, "trigger_type": "blend"})
    with pytest.raises(PdfastError, match="--pair-epochs needs a trigger-only"):
        pair_probe.main([bd, cl, "--epochs", "2", "--out", str(tmp_path / "p")])
