"""Inversion methods, shift scales and detection on tiny models, against hand-computed references."""
import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from pdfast.api import invert
from pdfast.chain import DDPMSampler
from pdfast.config import InversionConfig
from pdfast.engine import make_engine
from pdfast.engine.reference import chain_loss
from pdfast.errors import PdfastError
from pdfast.inversion import run_inversion
from pdfast.model import DiffusionModel
from pdfast.objectives import ShiftObjective
from pdfast.scales import ScaleTable, estimate_scales, load_scales_file, resolve_scales
from pdfast.schedule import Schedule

SCHED = Schedule.from_config({"clip_sample": False, "num_train_timesteps": 50})


class Linear:
    """eps(x, t) = a * x: a chain whose loss and gradient can be written by hand."""

    def __init__(self, a):
        self.a = a

    def __call__(self, x, t):
        return self.a * x


def linear_model(a=0.3, size=4):
    return DiffusionModel(Linear(a), SCHED, size, 3)


@pytest.mark.parametrize("norm", ["l1", "l2"])
def test_elijah_loss_and_grad_by_hand(norm):
    """K = 1: L = norm(mean_b a (n_b + d) - 0.5 d) ; dL/dd = (a - 0.5) * dnorm."""
    m, a = linear_model(), 0.3
    g = torch.Generator().manual_seed(0)
    n = torch.randn(5, 3, 4, 4, generator=g)
    d = torch.randn(1, 3, 4, 4, generator=g)
    eng = make_engine("reference", m)
    loss, grad = eng.loss_and_grad(d, n, [], DDPMSampler(SCHED, 1), ShiftObjective([0.5], norm), [0])
    r = a * n.mean(0) + (a - 0.5) * d[0]
    want = r.abs().mean() if norm == "l1" else (r * r).mean()
    dr = torch.sign(r) / r.numel() if norm == "l1" else 2 * r / r.numel()
    assert loss == pytest.approx(float(want), rel=1e-6)
    torch.testing.assert_close(grad[0], (a - 0.5) * dr, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("norm", ["l1", "l2"])
def test_puredif_two_step_loss_and_grad_by_hand(norm):
    """K = 2, loss at the second step: x1 = c1 (x0 - c2 a x0) + s z, m = a mean_b x1, L = norm(m - lam d)."""
    m, a, lam = linear_model(), 0.3, 0.41
    t0, t1 = SCHED.timesteps(2)
    c = SCHED.step_coefficients()
    c1, c2, s = float(c["c1"][t0]), float(c["c2"][t0]), float(c["sigma"][t0])
    g = torch.Generator().manual_seed(1)
    n = torch.randn(6, 3, 4, 4, generator=g)
    z = torch.randn(6, 3, 4, 4, generator=g)
    d = torch.randn(1, 3, 4, 4, generator=g)
    eng = make_engine("reference", m)
    loss, grad = eng.loss_and_grad(d, n, [z], DDPMSampler(SCHED, 2), ShiftObjective([0.0, lam], norm), [1])
    B = a * c1 * (1 - c2 * a)
    r = B * n.mean(0) + a * s * z.mean(0) + (B - lam) * d[0]
    want = r.abs().mean() if norm == "l1" else (r * r).mean()
    dr = torch.sign(r) / r.numel() if norm == "l1" else 2 * r / r.numel()
    assert loss == pytest.approx(float(want), rel=1e-5)
    torch.testing.assert_close(grad[0], (B - lam) * dr, rtol=1e-4, atol=1e-7)


def test_all_steps_loss_is_mean_of_single_step_losses():
    m = linear_model()
    g = torch.Generator().manual_seed(2)
    n, d = torch.randn(3, 3, 4, 4, generator=g), torch.randn(1, 3, 4, 4, generator=g)
    zs = [torch.randn(3, 3, 4, 4, generator=g) for _ in range(2)]
    sampler, objective = DDPMSampler(SCHED, 3), ShiftObjective([0.5, 0.45, 0.4], "l2")
    each = [float(chain_loss(m, d, n, zs, sampler, objective, [k])) for k in range(3)]
    both = float(chain_loss(m, d, n, zs, sampler, objective, [0, 1, 2]))
    assert both == pytest.approx(sum(each) / 3, rel=1e-6)


class Shifted:
    """Batch mean of the output is exactly lam_t * delta at every t, by construction."""

    def __init__(self, delta, lam_of_t):
        self.delta, self.lam = delta, lam_of_t

    def __call__(self, x, t):
        return (x - x.mean(0, keepdim=True)) + self.lam(int(t)) * self.delta


def test_scale_estimator_recovers_known_lambda():
    delta = torch.linspace(-1, 1, 3 * 4 * 4).reshape(3, 4, 4)
    lam = lambda t: 0.2 + 0.006 * t  # noqa: E731
    m = DiffusionModel(Shifted(delta, lam), SCHED, 4, 3)
    est = estimate_scales(m, delta, 6, batch=8)
    want = torch.tensor([lam(t) for t in SCHED.timesteps(6)])
    torch.testing.assert_close(est, want, rtol=1e-5, atol=1e-6)



def test_scale_estimator_walks_a_given_sampler():
    """With ``sampler`` the estimate follows that chain's timesteps (here the DDPM chain respaced to 20 steps)."""
    from pdfast.errors import PdfastError

    delta = torch.linspace(-1, 1, 3 * 4 * 4).reshape(3, 4, 4)
    lam = lambda t: 0.2 + 0.006 * t  # noqa: E731
    m = DiffusionModel(Shifted(delta, lam), SCHED, 4, 3)
    respaced = DDPMSampler(SCHED, clip_sample=False, respace=20)
    est = estimate_scales(m, delta, 5, batch=8, sampler=respaced)
    want = torch.tensor([lam(t) for t in respaced.timesteps[:5]])
    torch.testing.assert_close(est, want, rtol=1e-5, atol=1e-6)
    assert respaced.timesteps[:5] != SCHED.timesteps(5)  # a different chain from the default one
    with pytest.raises(PdfastError, match="exceeds the given sampler's 20 steps"):
        estimate_scales(m, delta, 21, batch=8, sampler=respaced)

def test_inversion_recovers_trigger_of_shifted_model():
    """On the synthetic model the loss is minimised by delta = truth when lambda matches: PureDiffusion finds it."""
    truth = -torch.ones(3, 4, 4)
    truth[:, 2:, 2:] = 0.5
    m = DiffusionModel(Shifted(truth, lambda t: 0.5), SCHED, 4, 3)
    # eps - lam delta has batch mean 0.5 truth - lam delta: zero at delta = truth (lam = 0.5 analytic-like table)
    cfg = InversionConfig(method="puredif", steps=3, scales="analytic", epochs=150, refine_epochs=150, lr=0.05).resolved()
    table = ScaleTable(torch.full((3,), 0.5), "test", SCHED.timesteps(3), torch.full((3,), 0.5))
    res = run_inversion(m, cfg, table)
    assert (res.trigger - truth).abs().max() < 0.1
    assert res.losses[-1] < res.losses[0] / 5


def test_scales_sources(tmp_path, tiny_model, monkeypatch):
    monkeypatch.setenv("PDFAST_CACHE_DIR", str(tmp_path / "cache"))
    t = resolve_scales(tiny_model, 4, "analytic")
    torch.testing.assert_close(t.values, tiny_model.schedule.analytic_scales(4))
    f = tmp_path / "s.json"
    f.write_text(json.dumps({"lambda": [0.1, 0.2, 0.3, 0.4, 0.5]}))
    torch.testing.assert_close(resolve_scales(tiny_model, 4, str(f)).values, torch.tensor([0.1, 0.2, 0.3, 0.4]))
    with pytest.raises(PdfastError, match="has 5 values"):
        load_scales_file(f, 6)
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(PdfastError, match="JSON"):
        load_scales_file(tmp_path / "bad.json", 2)


def test_surrogate_calibration_is_cached_and_leaves_model_untouched(tmp_path, tiny_model, monkeypatch):
    from dataclasses import replace

    from pdfast.config import SurrogateConfig

    monkeypatch.setenv("PDFAST_CACHE_DIR", str(tmp_path / "cache"))
    before = {k: v.clone() for k, v in tiny_model.net.state_dict().items()}
    sc = replace(SurrogateConfig(), steps=3, n_images=8, pool_steps=3, calib_batch=4, batch=4)
    t1 = resolve_scales(tiny_model, 3, "surrogate", surrogate=sc)
    assert not t1.cached and t1.values.shape == (3,) and torch.isfinite(t1.values).all()
    t2 = resolve_scales(tiny_model, 3, "surrogate", surrogate=sc)
    assert t2.cached
    torch.testing.assert_close(t1.values, t2.values)
    for k, v in tiny_model.net.state_dict().items():
        assert torch.equal(v, before[k]), k
    d = t1.to_dict()
    assert len(d["lambda"]) == len(d["analytic"]) == 3


def test_invert_api_keeps_caller_model_and_reports(tiny_model):
    net = tiny_model.net
    net.train().requires_grad_(True)
    calls = []
    res = invert(tiny_model, steps=2, scales="analytic", epochs=2, refine_epochs=1, batch=4, evaluate=False,
                 patch_starts="none", callback=lambda i, loss, d: calls.append(i))
    assert calls == [0, 1, 2]  # the refinement stage continues the iteration count
    assert res.timings["stages"] == {"search": 2, "refine": 1} and res.timings["iterations"] == 3
    assert net.training and all(p.requires_grad for p in net.parameters())
    d = res.to_dict()
    assert d["schema"].startswith("pdfast.report/") and d["scales"]["source"] == "analytic-baddiffusion"
    assert d["config"]["method"] == "puredif" and len(d["loss"]["history"]) == 3


def test_bad_inputs(tiny_model):
    with pytest.raises(PdfastError, match="unknown method"):
        InversionConfig(method="magic").resolved()
    with pytest.raises(PdfastError, match="larger than the model's schedule"):
        invert(tiny_model, steps=5000, scales="analytic", evaluate=False)
    nan_model = DiffusionModel(lambda x, t: x * float("nan"), SCHED, 4, 3)
    with pytest.raises(PdfastError, match="diverged"):
        invert(nan_model, steps=2, scales="analytic", epochs=2, batch=2, evaluate=False)


def _tiny_backdoored_folder(tmp_path):
    """A tiny backdoored model folder with a 20-step schedule (fast full chains)."""
    from pdfast.cli import main

    r = CliRunner()
    c, b = tmp_path / "clean", tmp_path / "bad"
    res = r.invoke(main, ["train", "--arch", "tiny", "--size", "8", "--steps", "2", "--batch", "2", "--n-images", "8",
                          "--out", str(c), "--no-progress", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    cfgf = c / "scheduler" / "scheduler_config.json"
    cfg = json.loads(cfgf.read_text())
    cfg["num_train_timesteps"] = 20
    cfgf.write_text(json.dumps(cfg))
    res = r.invoke(main, ["attack", "baddiffusion", "--model", str(c), "--trigger", "BOX_14", "--target", "HAT",
                          "--steps", "2", "--batch", "2", "--n-images", "8", "--warmup", "1", "--out", str(b),
                          "--no-progress", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    return b


def test_cli_invert_and_detect_end_to_end(tmp_path, monkeypatch):
    from pdfast.cli import main

    monkeypatch.setenv("PDFAST_CACHE_DIR", str(tmp_path / "cache"))
    b = _tiny_backdoored_folder(tmp_path)
    r = CliRunner(mix_stderr=False) if "mix_stderr" in CliRunner.__init__.__code__.co_varnames else CliRunner()
    out = tmp_path / "inv"
    res = r.invoke(main, ["invert", "--model", str(b), "--steps", "3", "--epochs", "2", "--batch", "2",
                          "--noise", "antithetic", "--objective", "relative",
                          "--surrogate-steps", "2", "--out", str(out), "--json", "--no-progress", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.stdout)
    assert rep["scales"]["source"] == "surrogate" and len(rep["scales"]["analytic"]) == 3
    for k in ("uniformity", "kl_mean", "asr", "l2", "detection", "pattern_uniformity", "pattern_asr", "pattern_l2"):
        assert k in rep["metrics"], k
    assert rep["metrics"]["detection"]["statistic"] == "trigger_miss"  # verdict v2, the shipped 16x16 statistic
    assert {"trigger_fires", "medoid_hits"} <= set(rep["metrics"]) and rep["selection"]["chosen"] in ("search", "refine")
    assert sorted(p.name for p in out.iterdir()) == ["pattern_samples.png", "report.json", "samples.png",
                                                     "trigger.png", "trigger.safetensors"]
    from safetensors import safe_open

    with safe_open(str(out / "trigger.safetensors"), "pt") as f:
        meta = f.metadata()
        assert sorted(f.keys()) == ["pattern", "trigger"]
        assert meta["method"] == "puredif" and meta["steps"] == "3" and meta["scales"] == "surrogate"
    # detect with a given trigger file; --fail-on-backdoor with a huge threshold -> exit 1
    res = r.invoke(main, ["detect", "--model", str(b), "--trigger", str(out / "trigger.safetensors"),
                          "--threshold", "10", "--fail-on-backdoor", "--out", str(tmp_path / "det"), "--json",
                          "--no-progress", "--device", "cpu"])
    assert res.exit_code == 1, res.output
    assert json.loads(res.stdout)["metrics"]["detection"]["verdict"] == "backdoored"


def test_cli_bad_inputs_leave_no_output(tmp_path):
    from pdfast.cli import main

    b = _tiny_backdoored_folder(tmp_path)
    r = CliRunner()
    bad = tmp_path / "wrong.npy"
    np.save(bad, np.zeros((3, 5, 5), np.float32))
    cases = [
        ["invert", "--model", str(b), "--method", "magic"],
        ["invert", "--model", str(b), "--noise", "antithetic", "--batch", "3", "--scales", "analytic"],
        ["invert", "--model", str(b), "--steps", "5000", "--scales", "analytic"],
        ["invert", "--model", str(b), "--scales", str(tmp_path / "missing.json")],
        ["detect", "--model", str(b), "--trigger", str(bad)],
    ]
    for i, args in enumerate(cases):
        out = tmp_path / f"o{i}"
        res = r.invoke(main, args + ["--out", str(out), "--no-progress", "--device", "cpu"])
        assert res.exit_code == 2, (args, res.output)
        assert "Traceback" not in res.output
        assert not out.exists(), args


def test_antithetic_noise_cancels_the_noise_floor():
    """eps = a x: with pairs (eps, -eps) the batch mean of eps_theta is exactly a delta, so the loss at k = 0 is
    mean |(a - lambda) delta| with no noise term (fresh noise adds a 1/sqrt(B) floor)."""
    from pdfast.inversion import _draw

    cfg = InversionConfig(noise="antithetic", batch=6).resolved()
    gen = torch.Generator().manual_seed(0)
    x = _draw(cfg.noise, cfg.batch, (3, 4, 4), gen, "cpu")
    assert x.shape == (6, 3, 4, 4) and torch.equal(x[:3], -x[3:])
    a, lam = 0.3, 0.5
    m = linear_model(a)
    table = ScaleTable(torch.full((1,), lam), "test", SCHED.timesteps(1), torch.full((1,), lam))
    for noise, exact in (("antithetic", True), ("fresh", False), ("fixed-antithetic", True), ("fixed", False)):
        cfg = InversionConfig(preset="v0.1", steps=1, scales="analytic", epochs=1, batch=8, noise=noise, seed=3,
                              objective="absolute").resolved()
        res = run_inversion(m, cfg, table)
        d0 = -torch.rand((1, 3, 4, 4), generator=torch.Generator().manual_seed(3))
        want = float(((a - lam) * d0).abs().mean())
        assert (abs(res.losses[0] - want) < 1e-6) == exact


def test_a_stage_of_its_own_noise_mode_draws_its_fixed_batch_once():
    """The polish stage's fixed-antithetic batch is drawn when it first runs and kept; it is pairs (eps, -eps); the
    run's own fixed batch (cfg.noise) is the one drawn first, as before there were stage modes."""
    from pdfast.inversion import _Descent, _draw

    m = linear_model(0.3)
    cfg = InversionConfig(preset="v0.1", steps=2, scales="analytic", epochs=1, batch=6, noise="fixed").resolved()
    loop = _Descent(m, cfg, None, torch.Generator().manual_seed(5), "cpu", [0.5, 0.5], None, False)
    first = _draw("fixed", 6, m.shape, torch.Generator().manual_seed(5), "cpu")
    torch.testing.assert_close(loop._batch(1, "fixed")[0], first, rtol=0, atol=0)
    pairs, zs = loop._batch(1, "fixed-antithetic")
    again, zs2 = loop._batch(1, "fixed-antithetic")
    assert torch.equal(pairs, again) and torch.equal(zs[0], zs2[0]) and torch.equal(pairs[:3], -pairs[3:])
    assert not torch.equal(pairs, first)


def test_relative_objective_value_and_gradient():
    """relative = L / n(delta): on eps = a x it is |a - lambda| whatever delta (zero gradient), so Adam leaves delta
    where it started; the closed form the fast engine uses (chain_rule -> total_and_grad) and the autograd chain rule
    both give autograd's gradient of M / n."""
    from pdfast.objectives import autograd_chain_rule, chain_rule

    a, lam = 0.3, 0.5
    table = ScaleTable(torch.full((1,), lam), "test", SCHED.timesteps(1), torch.full((1,), lam))
    cfg = InversionConfig(preset="v0.1", steps=1, scales="analytic", epochs=3, batch=4, noise="antithetic",
                          objective="relative", refine_epochs=0).resolved()
    res = run_inversion(linear_model(a), cfg, table)
    assert all(abs(v - abs(a - lam)) < 1e-6 for v in res.losses)
    d0 = -torch.rand((3, 4, 4), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(res.trigger, d0)
    w = torch.randn(3, 4, 4, generator=torch.Generator().manual_seed(1))
    for norm in ("l1", "l2"):
        d = torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(2)).requires_grad_(True)
        base = (w * d).sin().pow(2).mean()
        (g_base,) = torch.autograd.grad(base, d, retain_graph=True)
        n = d.abs().mean() if norm == "l1" else d.pow(2).mean()
        (g_want,) = torch.autograd.grad(base / n, d)
        for rule in (chain_rule, autograd_chain_rule):
            loss, grad = rule(ShiftObjective([lam], norm, relative=True), float(base.detach()), g_base, d.detach())
            assert abs(loss - float((base / n).detach())) < 1e-6
            torch.testing.assert_close(grad, g_want, rtol=1e-5, atol=1e-7)


def test_warm_start_and_new_bad_inputs(tiny_model):
    start = torch.full(tiny_model.shape, -0.25)
    seen = []
    invert(tiny_model, steps=1, scales="analytic", epochs=1, batch=2, lr=1e-6, evaluate=False, start=start,
           callback=lambda i, loss, d: seen.append(d.clone()))
    torch.testing.assert_close(seen[0].reshape(start.shape), start, atol=1e-5, rtol=0)
    with pytest.raises(PdfastError, match="start trigger has shape"):
        invert(tiny_model, steps=1, scales="analytic", epochs=1, batch=2, evaluate=False, start=torch.zeros(3, 5, 5))
    for noise in ("antithetic", "fixed-antithetic"):
        with pytest.raises(PdfastError, match=f"--noise {noise} needs an even --batch"):
            InversionConfig(noise=noise, batch=5).resolved()
    with pytest.raises(PdfastError, match="unknown objective"):
        InversionConfig(objective="magic").resolved()
    with pytest.raises(PdfastError, match="refine-epochs"):
        InversionConfig(refine_epochs=-1).resolved()


def test_refinement_starts_from_the_pattern_of_the_search():
    """Stage 2 starts from metrics.trigger_pattern(stage-1 trigger): with lr ~ 0 the result is that pattern."""
    from pdfast.metrics import trigger_pattern

    a, lam = 0.3, 0.5
    table = ScaleTable(torch.full((1,), lam), "test", SCHED.timesteps(1), torch.full((1,), lam))
    seen = []
    cfg = InversionConfig(preset="v0.1", steps=1, scales="analytic", epochs=2, refine_epochs=1, batch=4,
                          lr=1e-9).resolved()
    res = run_inversion(linear_model(a), cfg, table, callback=lambda i, loss, d: seen.append(d.clone()))
    d0 = -torch.rand((1, 3, 4, 4), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(res.trigger, trigger_pattern(d0)[0], atol=1e-6, rtol=0)
    assert cfg.objective == "relative" and len(seen) == 3
    # the refinement runs the absolute objective: |a - lam| * mean |delta| on eps = a x with antithetic noise
    assert res.losses[2] == pytest.approx(abs(a - lam) * float(trigger_pattern(d0).abs().mean()), rel=1e-5)


def _lam_table(k, lam=0.5):
    return ScaleTable(torch.full((k,), lam), "test", SCHED.timesteps(k), torch.full((k,), lam))


def test_bounds_image_projects_every_iterate_onto_minus_one_one():
    """The unconstrained optimum has values of 2 and -3; bounds="image" keeps every iterate in [-1, 1] and ends at
    the projection of the optimum (the loss is separable per element, so the box optimum is the clamp)."""
    truth = torch.full((3, 4, 4), -3.0)
    truth[:, :2] = 2.0
    truth[:, 2:, 2:] = 0.25
    m = DiffusionModel(Shifted(truth, lambda t: 0.5), SCHED, 4, 3)
    seen = []
    cfg = InversionConfig(steps=2, scales="analytic", epochs=200, refine_epochs=0, objective="absolute", lr=0.05,
                          bounds="image").resolved()
    res = run_inversion(m, cfg, _lam_table(2), callback=lambda i, loss, d: seen.append(d.clone()))
    assert all(float(d.abs().max()) <= 1.0 for d in seen)
    assert (res.trigger - truth.clamp(-1, 1)).abs().max() < 0.05
    free = run_inversion(m, InversionConfig(bounds="none", steps=2, scales="analytic", epochs=200, refine_epochs=0,
                                            objective="absolute", lr=0.05).resolved(), _lam_table(2))
    assert float(free.trigger.abs().max()) > 1.5  # without bounds it leaves the box: the test can tell the two apart


def test_bounds_image_is_the_trojdiff_shift_range_for_a_trojdiff_model():
    """A TrojDiff model's x_T shift is mu = (1 - gamma) g with g in [-1, 1]: bounds="image" keeps every iterate in
    [-(1 - gamma), 1 - gamma] (0.4 at gamma 0.6), where a BadDiffusion model's box is [-1, 1]."""
    truth = torch.full((3, 4, 4), -3.0)
    truth[:, :2] = 2.0
    cfg = InversionConfig(steps=2, scales="analytic", epochs=100, refine_epochs=0, objective="absolute", lr=0.05,
                          bounds="image").resolved()
    bound = {}
    for name, backdoor in (("trojdiff", {"family": {"name": "trojdiff", "gamma": 0.6}}), ("baddiffusion", None)):
        m = DiffusionModel(Shifted(truth, lambda t: 0.5), SCHED, 4, 3, backdoor=backdoor)
        seen = []
        run_inversion(m, cfg, _lam_table(2), callback=lambda i, loss, d: seen.append(d.clone()))
        bound[name] = max(float(d.abs().max()) for d in seen)
    assert bound["trojdiff"] == pytest.approx(0.4, abs=1e-6)
    assert bound["baddiffusion"] == pytest.approx(1.0, abs=1e-6)


def test_tail_average_is_the_mean_of_the_second_half_of_the_iterates():
    seen = []
    cfg = InversionConfig(steps=2, scales="analytic", epochs=6, refine_epochs=0, batch=4, average="tail",
                          patch_starts="none").resolved()
    res = run_inversion(linear_model(), cfg, _lam_table(2), callback=lambda i, loss, d: seen.append(d.clone()))
    torch.testing.assert_close(res.trigger, torch.stack(seen[3:]).mean(0)[0], atol=1e-6, rtol=0)
    last = run_inversion(linear_model(), replace(cfg, average="none"), _lam_table(2))
    torch.testing.assert_close(last.trigger, seen[-1][0], atol=1e-6, rtol=0)  # same path, last iterate


def test_cosine_schedule_sets_adams_step_sizes():
    """eps = a x with L1 and antithetic noise: the gradient's sign never changes, so Adam's step on every element
    is exactly the learning rate: lr * (1 + cos(pi i / n)) / 2 with the cosine schedule."""
    seen = []
    lr, n = 1e-3, 4
    cfg = InversionConfig(preset="v0.1", steps=1, scales="analytic", epochs=n, refine_epochs=0, batch=4, lr=lr,
                          objective="absolute",
                          lr_schedule="cosine").resolved()
    d0 = -torch.rand((1, 3, 4, 4), generator=torch.Generator().manual_seed(0))
    run_inversion(linear_model(), cfg, _lam_table(1), callback=lambda i, loss, d: seen.append(d.clone()))
    steps = [(b - a).abs() for a, b in zip([d0, *seen[:-1]], seen)]
    for i, s in enumerate(steps):
        want = lr * 0.5 * (1 + math.cos(math.pi * i / n))
        torch.testing.assert_close(s, torch.full_like(s, want), rtol=1e-3, atol=1e-9)


def test_warm_epochs_run_the_first_chain_step_alone_first():
    cfg = InversionConfig(steps=5, scales="analytic", epochs=4, refine_epochs=2, batch=4, warm_epochs=3,
                          patch_starts="none").resolved()
    res = run_inversion(linear_model(), cfg, _lam_table(5))
    assert res.drawn_steps[:3] == [0, 0, 0] and len(res.losses) == 9
    assert res.timings["stages"] == {"warm": 3, "search": 4, "refine": 2}
    with pytest.raises(PdfastError, match="warm-epochs"):
        InversionConfig(warm_epochs=-1).resolved()


def test_refinement_can_start_from_the_trigger_itself():
    seen = []
    cfg = InversionConfig(steps=1, scales="analytic", epochs=2, refine_epochs=1, batch=4, lr=1e-9,
                          refine_from="trigger", patch_starts="none").resolved()
    res = run_inversion(linear_model(), cfg, _lam_table(1), callback=lambda i, loss, d: seen.append(d.clone()))
    d0 = -torch.rand((1, 3, 4, 4), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(res.trigger, d0[0], atol=1e-6, rtol=0)


def test_coarse_epochs_draw_their_loss_step_from_the_first_ten_chain_steps_then_the_search_from_all_k():
    cfg = InversionConfig(steps=40, scales="analytic", epochs=6, refine_epochs=0, batch=4, coarse_epochs=12,
                          patch_starts="none").resolved()
    res = run_inversion(linear_model(), cfg, _lam_table(40))
    assert res.timings["stages"] == {"coarse": 12, "search": 6} and len(res.losses) == 18
    assert max(res.drawn_steps[:12]) < 10  # 12 draws from 0..9
    plain = run_inversion(linear_model(), replace(cfg, coarse_epochs=0), _lam_table(40))
    assert plain.timings["stages"] == {"search": 6}
    assert max(plain.drawn_steps + res.drawn_steps[12:]) >= 10  # 12 draws from 0..39: some reach past step 9
    with pytest.raises(PdfastError, match="coarse-epochs"):
        InversionConfig(coarse_epochs=-1).resolved()


def test_patch_grid_searches_from_each_patch_over_the_first_ten_steps_and_firing_chooses(monkeypatch):
    """patch_starts="grid" (docs/method.md 5.9): after the search and the refinement, one search from each patch of
    patterns.patch_starts, its loss steps drawn from the first min(K, 10) chain steps, and the candidate that fires
    most is returned (select_firing, stubbed here to score the bottom-right patch's trigger highest)."""
    from pdfast import inversion
    from pdfast.patterns import patch_starts

    starts, scores = [], {}

    def fake_select(model, cfg, engine, candidates):
        scores.update({k: (1.0 if k == "patch-br" else 0.0) for k in candidates})
        return candidates["patch-br"], {"chosen": "patch-br", "fires": scores}

    monkeypatch.setattr(inversion, "select_firing", fake_select)
    cfg = InversionConfig(steps=40, scales="analytic", epochs=3, refine_epochs=2, batch=4, lr=1e-9).resolved()
    assert cfg.patch_starts == "grid" and cfg.select == "firing"   # the pdfast preset's default
    seen = []
    res = run_inversion(linear_model(size=8), cfg, _lam_table(40), callback=lambda i, loss, d: seen.append(d.clone()))
    assert res.timings["stages"] == {"search": 3, "refine": 2, "patch-tl": 3, "patch-tr": 3, "patch-bl": 3,
                                     "patch-br": 3, "patch-c": 3}
    assert list(scores) == ["search", "refine", "patch-tl", "patch-tr", "patch-bl", "patch-br", "patch-c"]
    assert max(res.drawn_steps[5:]) < 10                         # the patches walk the first 10 chain steps only
    grid = patch_starts(3, 8)
    first_of_br = seen[5 + 3 * 3]                                # lr 1e-9: each stage stays at its start
    torch.testing.assert_close(first_of_br[0], grid["br"], atol=1e-6, rtol=0)
    torch.testing.assert_close(res.trigger, grid["br"], atol=1e-6, rtol=0)
    assert res.selection["chosen"] == "patch-br"
    with pytest.raises(PdfastError, match="--patch-starts grid needs --select firing"):
        InversionConfig(select="last").resolved()
    assert InversionConfig(preset="paper").resolved().patch_starts == "none"
    assert InversionConfig(method="elijah").resolved().patch_starts == "none"


def test_a_warm_start_is_refined_without_the_patch_grid():
    cfg = InversionConfig(steps=2, scales="analytic", epochs=2, refine_epochs=1, batch=4).resolved()
    res = run_inversion(linear_model(), cfg, _lam_table(2), start=torch.zeros(1, 3, 4, 4))
    assert res.timings["stages"] == {"search": 2, "refine": 1} and cfg.patch_starts == "grid"
