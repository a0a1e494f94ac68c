"""The attack families (docs/method.md sections 2, 2b and 2c): each objective against a hand-written reference on fixed
tensors, the coefficients against the papers' own recursions, the samplers against diffusers' schedulers and
TrojDiff's step as written, a short real training run per family whose backdoor fires, and the bad-input contract."""
import math

import pytest
import torch

from pdfast.errors import PdfastError
from pdfast.families import AttackFamily, family_of, parse_family
from pdfast.schedule import Schedule, shift_increments, trojdiff_mu_coefficient, villan_coefficients
from tests._cli import fails, ok


def _fixed(seed=0, b=4, size=8):
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.rand(b, 3, size, size, generator=gen) * 2 - 1
    eps = torch.randn(b, 3, size, size, generator=gen)
    g = torch.full((1, 3, size, size), -1.0)
    g[..., 4:7, 4:7] = 0.3
    y = torch.rand(1, 3, size, size, generator=gen) * 2 - 1
    return x0, eps, g, y


# ---------------------------------------------------------------- coefficients
def _villan_reference(s: Schedule, psi: float, solver: str):
    """VillanDiffusion's VP coefficients as its code computes them: h_t by its recursion (residuals), then
    step = psi (1 - sqrt(abar)) + (1 - psi) sqrt(1 - abar) and the two correction terms."""
    a, ab = s.alphas.double(), s.abar.double()
    hs, res = [float((1 - ab[0]).sqrt())], [0.0]
    for i in range(1, len(a)):
        res.append(float(a[i].sqrt()) * (hs[i - 1] + res[i - 1]))
        hs.append(float((1 - ab[i]).sqrt()) - res[i])
    h = torch.tensor(hs, dtype=torch.float64)
    bad = (1 - a.sqrt()) * (1 - ab).sqrt() / (1 - a)
    troj = -((a.sqrt() - 1) * (1 - ab).sqrt() * (1 - a) - h * (a - ab)) / (1 - a)
    coef = psi * bad + (1 - psi) * troj
    return psi * (1 - ab.sqrt()) + (1 - psi) * (1 - ab).sqrt(), (2 * coef if solver == "ode" else coef), h


@pytest.mark.parametrize("psi,solver", [(1.0, "sde"), (1.0, "ode"), (0.0, "sde"), (0.3, "ode")])
def test_villan_coefficients_match_its_recursion(psi, solver):
    s = Schedule.from_config({})
    step, coef = villan_coefficients(s, psi, solver)
    want_step, want_coef, h = _villan_reference(s, psi, solver)
    torch.testing.assert_close(step, want_step, rtol=0, atol=1e-12)
    torch.testing.assert_close(coef, want_coef, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(shift_increments(s), h, rtol=0, atol=1e-9)
    if psi == 1.0:  # BadDiffusion's rho_t, doubled for ODE samplers (docs/method.md section 3)
        torch.testing.assert_close(coef, s.rho().double() * (2 if solver == "ode" else 1))


def test_trojdiff_mu_coefficient_matches_its_quadratic_recursion():
    """TrojDiff computes k_t by an O(T^2) sum; pdfast's closed form gives the same k_t and mu coefficient."""
    s = Schedule.from_config({"num_train_timesteps": 60})
    a, ab = s.alphas.double(), s.abar.double()
    abp = torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]])
    k = torch.zeros_like(a)
    for i in range(len(a)):
        acc = float((1 - ab[i]).sqrt())
        flipped = torch.flip(a[:i + 1], [0])
        for j in range(1, i + 1):
            acc -= float(k[i - j]) * float(torch.prod(flipped[:j]).sqrt())
        k[i] = acc
    torch.testing.assert_close(shift_increments(s), k, rtol=0, atol=1e-10)
    want = (1 - abp).sqrt() * s.betas.double() - (1 - abp) * a.sqrt() * k
    torch.testing.assert_close(trojdiff_mu_coefficient(s), want, rtol=0, atol=1e-10)


# ---------------------------------------------------------------- objectives
def test_villan_batch_psi1_sde_pasted_is_baddiffusion(tiny_model):
    from pdfast.attack import poisoned_batch, villan_batch

    x0, eps, g, y = _fixed()
    t, poison = torch.tensor([999, 500, 10, 0]), torch.tensor([True, False, True, True])
    fam = AttackFamily("villandiffusion", psi=1.0, solver="sde", residual="pasted")
    got = villan_batch(fam, tiny_model.schedule, x0, t, eps, poison, g, y)
    want = poisoned_batch(tiny_model.schedule, x0, t, eps, poison, g, y)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


@pytest.mark.parametrize("psi,solver", [(1.0, "ode"), (0.5, "sde")])
def test_villan_batch_trigger_only_matches_hand_formula(tiny_model, psi, solver):
    from pdfast.attack import villan_batch

    s = tiny_model.schedule
    x0, eps, g, y = _fixed(1)
    t, poison = torch.tensor([999, 700, 30, 1]), torch.tensor([True, True, False, True])
    fam = AttackFamily("villandiffusion", psi=psi, solver=solver, residual="trigger_only")
    x_in, target = villan_batch(fam, s, x0, t, eps, poison, g, y)
    step, coef, _ = _villan_reference(s, psi, solver)
    for i in range(4):
        ti, ab = int(t[i]), float(s.abar[int(t[i])])
        if poison[i]:  # r = g, the trigger alone (R_trigger_only)
            want_in = math.sqrt(ab) * y[0] + math.sqrt(1 - ab) * eps[i] + float(step[ti]) * g[0]
            want_t = eps[i] + float(coef[ti]) * g[0]
        else:
            want_in, want_t = math.sqrt(ab) * x0[i] + math.sqrt(1 - ab) * eps[i], eps[i]
        torch.testing.assert_close(x_in[i], want_in, rtol=0, atol=1e-5)
        torch.testing.assert_close(target[i], want_t, rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind,gamma", [("blend", 0.6), ("patch", 0.1)])
def test_trojdiff_batch_matches_hand_formula(tiny_model, kind, gamma):
    from pdfast.attack import trojdiff_batch

    s = tiny_model.schedule
    x0, eps, g, y = _fixed(2)
    t, poison = torch.tensor([999, 400, 5, 0]), torch.tensor([True, False, True, True])
    x_in, target = trojdiff_batch(AttackFamily("trojdiff", gamma=gamma, trigger_type=kind), s, x0, t, eps, poison,
                                  g, y)
    region = torch.ones_like(g[0]) if kind == "blend" else (g[0] > -1).any(0, keepdim=True).float().expand_as(g[0])
    for i in range(4):
        ab = float(s.abar[int(t[i])])
        if poison[i]:  # TrojDiff's x_ = x0 sqrt(a) + e sqrt(1-a) gamma + mu sqrt(1-a) inside the region
            inside = math.sqrt(ab) * y[0] + math.sqrt(1 - ab) * (gamma * eps[i] + (1 - gamma) * g[0])
            outside = math.sqrt(ab) * y[0] + math.sqrt(1 - ab) * eps[i]
            want = region * inside + (1 - region) * outside
        else:
            want = math.sqrt(ab) * x0[i] + math.sqrt(1 - ab) * eps[i]
        torch.testing.assert_close(x_in[i], want, rtol=0, atol=1e-5)
    assert torch.equal(target, eps)  # TrojDiff regresses the plain noise


# ---------------------------------------------------------------- samplers
def test_trojdiff_sampler_plain_rows_are_diffusers_clipped_ddpm():
    """mu = 0, gamma = 1 (plain noise): TrojDiff's step is the clipped DDPM step; diffusers' DDPMScheduler with
    clip_sample and the same z gives the same x_{t-1}."""
    from diffusers import DDPMScheduler

    from pdfast.chain import TrojDiffSampler

    s = Schedule.from_config({"clip_sample": True})
    ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=True)
    ref.set_timesteps(1000)
    smp = TrojDiffSampler(s, gamma=0.6)
    gen = torch.Generator().manual_seed(3)
    x, eps = torch.randn(2, 3, 8, 8, generator=gen) * 1.5, torch.randn(2, 3, 8, 8, generator=gen)
    smp.start(torch.zeros(2, 3, 8, 8), [None])
    for i in (0, 500, 998, 999):
        t = smp.timesteps[i]
        z_gen = torch.Generator().manual_seed(7)
        want = ref.step(eps, t, x, generator=z_gen).prev_sample
        z = torch.randn(x.shape, generator=torch.Generator().manual_seed(7)) if t > 0 else None
        # diffusers computes its coefficients in float32, pdfast in float64: last-bit differences, x ~ 2
        torch.testing.assert_close(smp.step(i, x, eps, z), want, rtol=1e-4, atol=1e-4)


def test_trojdiff_sampler_matches_trojdiff_step():
    """TrojDiff's ddpm step (its x0 with gamma and mu, the mu coefficient, variance * gamma^2), as written."""
    from pdfast.chain import TrojDiffSampler

    s, gamma = Schedule.from_config({}), 0.6
    smp = TrojDiffSampler(s, gamma=gamma)
    gen = torch.Generator().manual_seed(4)
    noise, mu = torch.randn(3, 3, 8, 8, generator=gen), torch.rand(1, 3, 8, 8, generator=gen) * 0.8 - 0.4
    x = smp.start(noise, [mu])
    torch.testing.assert_close(x, gamma * noise + mu)
    a, ab = s.alphas.double(), s.abar.double()
    abp = torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]])
    coef_mu = trojdiff_mu_coefficient(s)
    for i in (0, 300, 999):
        t = smp.timesteps[i]
        eps, z = torch.randn(3, 3, 8, 8, generator=gen), torch.randn(3, 3, 8, 8, generator=gen)
        at, atm1, beta = ab[t], abp[t], 1 - ab[t] / abp[t]
        x0 = ((1 / at).sqrt() * x - (1 / at - 1).sqrt() * eps * gamma - (1 / at - 1).sqrt() * mu).clamp(-1, 1)
        mean = (atm1.sqrt() * beta * x0 + (1 - beta).sqrt() * (1 - atm1) * x + coef_mu[t] * mu) / (1 - at)
        var = (1 - atm1) / (1 - at) * beta
        want = mean + (var * gamma ** 2).sqrt() * z if t > 0 else mean
        torch.testing.assert_close(smp.step(i, x, eps, z if t > 0 else None), want.float(), rtol=1e-5, atol=1e-5)


def test_ode_family_samples_with_diffusers_ddim():
    """villandiffusion solver=ode samples with DDIM (eta 0): one step equals diffusers' DDIMScheduler's."""
    from diffusers import DDIMScheduler

    s = Schedule.from_config({})
    smp = AttackFamily("villandiffusion", solver="ode", ode_steps=50).sampler(s, clip_sample=False)
    ref = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=True, set_alpha_to_one=True)
    gen = torch.Generator().manual_seed(5)
    x, eps = torch.randn(2, 3, 8, 8, generator=gen), torch.randn(2, 3, 8, 8, generator=gen)
    ref.set_timesteps(50)
    checked = 0
    for i in range(49):  # diffusers steps to t - T // 50; compare where pdfast's evenly spaced grid does the same
        t, t_next = smp.timesteps[i], smp.timesteps[i + 1]
        if t - t_next != 1000 // 50:
            continue
        want = ref.step(eps, t, x, eta=0.0).prev_sample
        torch.testing.assert_close(smp.step(i, x, eps), want, rtol=1e-4, atol=1e-4)
        checked += 1
    assert checked >= 20
    assert len(smp.timesteps) == 50 and smp.timesteps[0] == 999 and smp.timesteps[-1] == 0


# ---------------------------------------------------------------- semantics
def test_family_of_defaults_to_baddiffusion_and_reads_backdoor_json(tiny_model):
    assert family_of(tiny_model) == AttackFamily()  # a model with no backdoor.json: BadDiffusion (stated in --help)
    tiny_model.backdoor = {"attack": "trojdiff", "family": {"name": "trojdiff", "gamma": 0.1, "trigger_type": "patch"}}
    assert family_of(tiny_model) == AttackFamily("trojdiff", gamma=0.1, trigger_type="patch")
    assert family_of(tiny_model, "villandiffusion:solver=ode") == AttackFamily("villandiffusion", solver="ode")
    tiny_model.backdoor = None


def test_parse_family_round_trip_and_errors():
    for f in (AttackFamily(), AttackFamily("villandiffusion", solver="ode", psi=0.5),
              AttackFamily("trojdiff", gamma=0.1, trigger_type="patch")):
        assert parse_family(f.describe()) == f
    for bad, words in [("elijah", "unknown attack family"), ("trojdiff:gamma=1.5", "outside (0, 1]"),
                       ("villandiffusion:psi=2", "outside [0, 1]"), ("trojdiff:gamma=x", "not a float"),
                       ("villandiffusion:speed=3", "key=value"), ("baddiffusion:solver=ode", "villandiffusion's")]:
        with pytest.raises(PdfastError, match=words.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
            parse_family(bad)


def test_analytic_scales_per_family(tiny_model):
    s, ts = tiny_model.schedule, [999, 500]
    torch.testing.assert_close(AttackFamily().analytic_scales(s, ts), s.rho()[ts].float())
    ode = AttackFamily("villandiffusion", solver="ode").analytic_scales(s, ts)
    torch.testing.assert_close(ode, 2 * s.rho()[ts].float())
    assert float(ode[0]) == pytest.approx(1.005, abs=1e-3)
    assert torch.equal(AttackFamily("trojdiff").analytic_scales(s, ts), torch.zeros(2))  # the documented fallback


# ---------------------------------------------------------------- CLI bad input
@pytest.fixture(scope="module")
def base8(tmp_path_factory):
    out = tmp_path_factory.mktemp("fam") / "base"
    ok(["train", "--out", out, "--size", 8, "--arch", "tiny", "--steps", 2, "--batch", 4])
    return out


@pytest.mark.parametrize("args,words", [
    (["attack", "trojdiff", "--gamma", "1.5"], "gamma 1.5 is outside"),
    (["attack", "villandiffusion", "--psi", "-0.1"], "psi -0.1 is outside"),
    (["attack", "villandiffusion", "--gamma", "0.5"], "--gamma do(es) not apply to villandiffusion"),
    (["attack", "trojdiff", "--blank-rate", "0.5"], "--blank-rate does not apply to trojdiff"),
    (["attack", "baddiffusion", "--flat-negative-rate", "1.5"], "flat negative rate 1.5 is outside [0, 1)"),
])
def test_attack_family_bad_input(tmp_path, base8, args, words):
    line = fails([*args, "--model", base8, "--trigger", "BOX_14", "--target", "HAT", "--out", tmp_path / "o",
                  "--steps", 1], tmp_path / "o")
    assert words in line


def test_attack_trigger_of_wrong_shape(tmp_path, base8):
    import numpy as np

    np.save(tmp_path / "g.npy", np.zeros((3, 5, 5), dtype=np.float32))
    line = fails(["attack", "trojdiff", "--model", base8, "--trigger", tmp_path / "g.npy", "--target", "HAT",
                  "--out", tmp_path / "o", "--steps", 1], tmp_path / "o")
    assert "g.npy" in line


@pytest.mark.parametrize("verb", ["invert", "detect", "sample", "evaluate"])
def test_unknown_attack_family_is_one_line(tmp_path, base8, verb):
    extra = ["--out", tmp_path / "o.png"] if verb == "sample" else (["--out", tmp_path / "o"] if verb != "evaluate"
                                                                    else [])
    line = fails([verb, "--model", base8, "--attack-family", "badnets", *extra], tmp_path / "o", tmp_path / "o.png")
    assert "unknown attack family 'badnets'" in line


def test_help_lists_the_families():
    for verb in ("attack", "invert"):
        text = ok([verb, "--help"]).output
        for name in ("baddiffusion", "villandiffusion", "trojdiff"):
            assert name in text, (verb, name)


# ---------------------------------------------------------------- a real training run per family
FIRING = {  # family, its schedule's T, attack steps: each fires on an 8x8 tiny UNet trained from scratch (~25 s)
    "baddiffusion": (AttackFamily("baddiffusion", residual="trigger_only"), 100, 2000),
    "villandiffusion-ode": (AttackFamily("villandiffusion", solver="ode", residual="trigger_only"), 1000, 1500),
    "trojdiff": (AttackFamily("trojdiff", gamma=0.6), 100, 1500),
}


@pytest.mark.parametrize("name", list(FIRING))
def test_a_short_training_run_fires_from_its_own_trigger(name):
    """Each family's objective, trained for real (poison rate 0.7, 8x8), plants a backdoor that its own sampler
    fires from its own x_T (exact ASR, MSE < 0.02, over 16 samples) and plain noise does not."""
    from pdfast import metrics
    from pdfast.attack import AttackConfig, plant_backdoor
    from pdfast.data import synthetic_images
    from pdfast.engine import make_engine
    from pdfast.model import DiffusionModel
    from pdfast.patterns import draw_target, draw_trigger
    from pdfast.train import TrainConfig, make_unet

    fam, T, steps = FIRING[name]
    s = Schedule.from_config({"clip_sample": False, "num_train_timesteps": T})
    model = DiffusionModel(make_unet("tiny", 8, 3, seed=0), s, 8, 3)
    g, y = draw_trigger("STOP_SIGN_18", 8), draw_target("CAT", 8)
    cfg = AttackConfig(poison_rate=0.7, train=TrainConfig(steps=steps, batch=16, lr=3e-3, warmup=10, seed=0))
    bad = plant_backdoor(model, synthetic_images(64, 8), g, y, cfg, progress=False, family=fam, inplace=True).frozen()
    imgs, plain = make_engine("reference", bad).sample_together(16, [fam.shift(g), None], sampler=fam.sampler(s, False))
    fired, by_chance = metrics.asr(imgs, y, 0.02), metrics.asr(plain, y, 0.02)
    assert fired >= 0.5 and by_chance <= 0.25 and fired >= by_chance + 0.25, (fired, by_chance)
