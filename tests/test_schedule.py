"""Schedule: betas, and the ancestral step its coefficients make (pdfast.chain.DDPMSampler), against diffusers'
DDPMScheduler; the docs/method.md section 3 scales, errors."""
import pytest
import torch

from pdfast.errors import PdfastError
from pdfast.schedule import Schedule

SCHEDULES = {
    "linear": {},
    "scaled_linear": {"beta_start": 0.00085, "beta_end": 0.012},
    "squaredcos_cap_v2": {},
}


def _step(s, x, eps, t, z):
    """One DDPM step at timestep t, by the sampler that owns it (index T-1-t of the full chain), clip_sample as the
    schedule's config says."""
    from pdfast.chain import DDPMSampler

    return DDPMSampler(s).step(s.T - 1 - t, x, eps, z)


def _diffusers(cfg):
    """diffusers' DDPMScheduler with its full T-step grid, its arithmetic lifted to float64.

    Its own float32 alphas_cumprod lose ~5e-4 relative in 1 - abar_t near t = 0 (abar ~ 0.9999), which would
    swamp a 1e-6 comparison; the betas stay the ones diffusers computed.
    """
    from diffusers import DDPMScheduler

    d = DDPMScheduler(**cfg)
    d.set_timesteps(d.config.num_train_timesteps)
    d.alphas_cumprod = torch.cumprod(1 - d.betas.double(), 0)
    d.one = torch.tensor(1.0, dtype=torch.float64)
    return d


@pytest.mark.parametrize("kind", list(SCHEDULES))
def test_betas_equal_diffusers(kind):
    from diffusers import DDPMScheduler

    cfg = {"beta_schedule": kind, **SCHEDULES[kind]}
    d = DDPMScheduler(**cfg)
    s = Schedule.from_config(cfg)
    assert s.T == 1000 and s.betas.dtype == torch.float64
    # diffusers stores betas in float32: equal up to its rounding
    torch.testing.assert_close(s.betas, d.betas.double(), rtol=2e-7, atol=1e-9)


@pytest.mark.parametrize("kind", list(SCHEDULES))
@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_small_log", "fixed_large"])
@pytest.mark.parametrize("clip", [True, False])
def test_step_equals_diffusers(kind, variance_type, clip):
    cfg = {"beta_schedule": kind, "variance_type": variance_type, "clip_sample": clip, **SCHEDULES[kind]}
    d = _diffusers(cfg)
    # pdfast on diffusers' exact (float32-rounded) betas: for squaredcos at t = 999 (alpha = 0.001) the 6e-8
    # rounding of beta is amplified by 1/sqrt(alpha_t) ~ 32 into ~1e-3; test_betas_equal_diffusers covers the betas
    s = Schedule.from_config({**cfg, "trained_betas": d.betas.tolist()})
    gen = torch.Generator().manual_seed(0)
    for t in (999, 500, 1, 0):
        x = torch.randn(2, 3, 4, 4, generator=gen, dtype=torch.float64) * 1.5
        eps = torch.randn(2, 3, 4, 4, generator=gen, dtype=torch.float64)
        ref = d.step(eps, t, x, generator=torch.Generator().manual_seed(t)).prev_sample
        z = torch.randn(x.shape, generator=torch.Generator().manual_seed(t), dtype=torch.float64)  # diffusers' noise
        torch.testing.assert_close(_step(s, x, eps, t, z), ref, rtol=0, atol=1e-6, msg=f"t={t}")
    if clip:  # the clip matters: a huge eps pushes x0 outside [-1, 1]
        x, eps = torch.zeros(1, 3, 2, 2, dtype=torch.float64), torch.full((1, 3, 2, 2), 50.0, dtype=torch.float64)
        ref = d.step(eps, 500, x, generator=torch.Generator().manual_seed(1)).prev_sample
        z = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        torch.testing.assert_close(_step(s, x, eps, 500, z), ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", ["linear", "scaled_linear"])
def test_step_with_own_betas(kind):
    """End to end: pdfast's own float64 betas, same step as diffusers within 1e-6."""
    cfg = {"beta_schedule": kind, "clip_sample": False, **SCHEDULES[kind]}
    d, s = _diffusers(cfg), Schedule.from_config(cfg)
    gen = torch.Generator().manual_seed(1)
    for t in (999, 500, 1, 0):
        x, eps = torch.randn(2, 3, 4, 4, generator=gen, dtype=torch.float64), torch.randn(2, 3, 4, 4, generator=gen, dtype=torch.float64)
        ref = d.step(eps, t, x, generator=torch.Generator().manual_seed(t)).prev_sample
        z = torch.randn(x.shape, generator=torch.Generator().manual_seed(t), dtype=torch.float64)
        torch.testing.assert_close(_step(s, x, eps, t, z), ref, rtol=0, atol=1e-6)


def test_step_float32_and_no_noise_at_zero():
    s = Schedule.default(warn=False, clip_sample=False)
    x, eps = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    assert _step(s, x, eps, 10, torch.randn(2, 3, 4, 4)).dtype == torch.float32
    assert torch.equal(_step(s, x, eps, 0, torch.randn(2, 3, 4, 4)), _step(s, x, eps, 0, None))


def test_coefficient_cache_follows_variance_type():
    """Two schedules on the same betas tensor but different variance types never share step coefficients."""
    b = Schedule.default(warn=False).betas
    x, eps, z = torch.zeros(1, 1, 1, 1), torch.zeros(1, 1, 1, 1), torch.ones(1, 1, 1, 1)
    for vt in ["fixed_small", "fixed_large", "fixed_small", "fixed_large"]:  # temporaries: ids get reused
        sigma = float(_step(Schedule(b, vt), x, eps, 500, z))
        expect = b[500] if vt == "fixed_large" else b[500] * (1 - Schedule(b).abar[499]) / (1 - Schedule(b).abar[500])
        assert sigma == pytest.approx(float(expect) ** 0.5, rel=1e-6)


def test_analytic_scales_match_method_table():
    s = Schedule.default(warn=False)
    rho = s.rho()
    for t in range(999, 989, -1):
        assert round(float(rho[t]), 4) == 0.5025
    table = {900: 0.502, 700: 0.500, 500: 0.481, 300: 0.390, 100: 0.162, 10: 0.023}
    for t, lam in table.items():
        assert round(float(rho[t]), 3) == lam, t
    sde, ode = s.analytic_scales(10), s.analytic_scales(10, "ode")
    assert sde.shape == (10,) and sde.dtype == torch.float32
    torch.testing.assert_close(sde, rho[list(range(999, 989, -1))].float())
    torch.testing.assert_close(ode, 2 * sde)
    assert round(float(s.analytic_scales(1000)[-1]), 6) == round(float(rho[0]), 6)


def test_timesteps():
    s = Schedule.from_config({"num_train_timesteps": 20})
    assert s.timesteps() == list(range(19, -1, -1))
    assert s.timesteps(3) == [19, 18, 17]
    assert s.timesteps(20)[-1] == 0


def _one_line(err):
    msg = str(err.value)
    assert msg and "\n" not in msg
    return msg


def test_errors():
    with pytest.raises(PdfastError) as e:
        Schedule.from_config({"beta_schedule": "sigmoid"})
    assert "sigmoid" in _one_line(e)
    with pytest.raises(PdfastError) as e:
        Schedule.from_config({"prediction_type": "v_prediction"})
    assert "v_prediction" in _one_line(e)
    for vt in ("learned", "learned_range"):
        with pytest.raises(PdfastError) as e:
            Schedule.from_config({"variance_type": vt})
        assert vt in _one_line(e)
    s = Schedule.from_config({"num_train_timesteps": 20})
    for k in (21, 0, -1):
        with pytest.raises(PdfastError) as e:
            s.timesteps(k)
        assert str(k) in _one_line(e) and "20" in str(e.value)
    with pytest.raises(PdfastError) as e:
        s.analytic_scales(2, "flow")
    _one_line(e)
    with pytest.raises(PdfastError) as e:
        Schedule.from_config({"num_train_timesteps": 1})
    _one_line(e)


def test_default_warns():
    with pytest.warns(UserWarning, match="default"):
        s = Schedule.default()
    assert s.T == 1000 and float(s.betas[0]) == pytest.approx(1e-4) and float(s.betas[-1]) == pytest.approx(0.02)


@pytest.mark.parametrize("kind", list(SCHEDULES))
def test_config_round_trip(kind):
    from diffusers import DDPMScheduler

    s = Schedule.from_config({"beta_schedule": kind, "num_train_timesteps": 50, "variance_type": "fixed_large",
                              "clip_sample": False, "clip_sample_range": 2.0, **SCHEDULES[kind]})
    cfg = s.to_config()
    assert cfg["_class_name"] == "DDPMScheduler" and cfg["num_train_timesteps"] == 50
    back = Schedule.from_config(cfg)
    assert torch.equal(back.betas, s.betas)
    assert (back.variance_type, back.clip_sample, back.clip_sample_range) == ("fixed_large", False, 2.0)
    assert back.to_config() == cfg
    # diffusers reads the same config into the same schedule
    d = DDPMScheduler.from_config(cfg)
    torch.testing.assert_close(d.betas.double(), s.betas, rtol=2e-7, atol=1e-9)
    assert d.config.variance_type == "fixed_large" and d.config.clip_sample is False


@pytest.mark.parametrize("clip", [True, False])
def test_respaced_step_equals_diffusers_on_the_same_grid(clip):
    """The verdict's short chain (DDPMSampler respace=n): every step equals diffusers' DDPMScheduler run on the same
    custom timesteps (its betas 1 - abar_t / abar_prev_t, the same posterior variance), noise and clip included."""
    from diffusers import DDPMScheduler

    from pdfast.chain import DDPMSampler

    cfg = {"beta_schedule": "linear", "clip_sample": clip}
    s = Schedule.from_config(cfg)
    sampler = DDPMSampler(s, respace=25)
    assert len(sampler.timesteps) == 25 and sampler.timesteps[0] == 999 and sampler.timesteps[-1] == 0
    d = DDPMScheduler(**cfg, trained_betas=s.betas.tolist())
    d.set_timesteps(timesteps=sampler.timesteps)
    d.alphas_cumprod = s.abar.clone()
    d.one = torch.tensor(1.0, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    for i, t in enumerate(sampler.timesteps):
        x = torch.randn(2, 3, 4, 4, generator=gen, dtype=torch.float64) * 1.5
        eps = torch.randn(2, 3, 4, 4, generator=gen, dtype=torch.float64)
        ref = d.step(eps, t, x, generator=torch.Generator().manual_seed(t)).prev_sample
        z = torch.randn(x.shape, generator=torch.Generator().manual_seed(t), dtype=torch.float64)
        torch.testing.assert_close(sampler.step(i, x, eps, z if t > 0 else None), ref, rtol=0, atol=1e-6,
                                   msg=f"t={t}")


def test_respaced_schedule_keeps_the_marginals():
    s = Schedule.default(warn=False)
    sub, kept = s.respaced(100)
    assert kept[0] == 0 and kept[-1] == s.T - 1 and len(set(kept)) == 100
    torch.testing.assert_close(sub.abar, s.abar[kept], rtol=1e-12, atol=0)
    full, _ = s.respaced(s.T)  # n = T: the schedule itself
    torch.testing.assert_close(full.betas, s.betas, rtol=1e-9, atol=0)
    from pdfast.chain import DDPMSampler

    assert DDPMSampler(s, respace=s.T).timesteps == DDPMSampler(s).timesteps
    with pytest.raises(PdfastError, match="2..1000"):
        s.respaced(1)
    with pytest.raises(PdfastError, match="steps or respace"):
        DDPMSampler(s, steps=10, respace=100)
