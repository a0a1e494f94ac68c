"""The reference DDPM/DDIM samplers and the docs/method.md section 7 metrics (checked against brute force)."""
import json
import math

import pytest
import torch

from pdfast.model import DiffusionModel, from_callable
from pdfast.schedule import Schedule


@pytest.fixture
def short():
    """A 20-step schedule: a full chain in a few milliseconds."""
    return Schedule.from_config({"num_train_timesteps": 20, "clip_sample": False})


@pytest.fixture
def tiny20(tiny_unet, short):
    return DiffusionModel(tiny_unet, short, sample_size=8).frozen()


# ---------- sampling ----------
def test_sample_deterministic_shape_range(tiny20):
    from pdfast.sampling import sample

    a = sample(tiny20, 3, seed=0, batch=2)
    assert a.shape == (3, 3, 8, 8) and a.dtype == torch.float32
    assert a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, sample(tiny20, 3, seed=0, batch=2))
    assert not torch.equal(a, sample(tiny20, 3, seed=1, batch=2))
    seen = []
    sample(tiny20, 1, seed=0, callback=seen.append)
    assert seen == list(range(19, -1, -1))
    seen.clear()
    sample(tiny20, 1, seed=0, steps=5, callback=seen.append)
    assert seen == [19, 18, 17, 16, 15]


def test_sample_clamps(short):
    from pdfast.sampling import sample

    wild = from_callable(lambda x, t: -50 * torch.ones_like(x), short, 4)
    out = sample(wild, 2, seed=0)
    assert out.min() >= -1 and out.max() <= 1 and out.abs().max() == 1


def test_trigger_shifts_first_input(short):
    from pdfast.sampling import sample

    first = []

    def eps(x, t):
        if int(t) == 19:
            first.append(x.clone())
        return torch.zeros_like(x)

    m = from_callable(eps, short, 4)
    g = torch.linspace(-1, 1, 48).view(3, 4, 4)
    sample(m, 2, seed=5)
    sample(m, 2, seed=5, trigger=g)
    assert len(first) == 2
    torch.testing.assert_close(first[1] - first[0], g.expand(2, 3, 4, 4))


class PointMass:
    """The exact eps-prediction for data that is one image x0: eps(x_t, t) = (x_t - sqrt(abar_t) x0)/sqrt(1-abar_t)."""

    def __init__(self, schedule, x0):
        self.abar, self.x0 = schedule.abar.to(torch.float32), x0

    def __call__(self, x, t):
        ab = self.abar[int(t)]
        return (x - ab.sqrt() * self.x0) / (1 - ab).sqrt()


@pytest.mark.parametrize("steps", [1, 4, 20])
def test_ddim_and_ddpm_recover_a_point_mass(steps):
    """With the exact eps of a one-image data set, DDIM (eta = 0) predicts x0 at every step and returns it; the
    ancestral DDPM chain ends on it too (sigma_0 = 0). Deterministic per seed."""
    from pdfast.model import DiffusionModel
    from pdfast.sampling import ddim_sample, sample
    from pdfast.schedule import Schedule

    sched = Schedule.from_config({"clip_sample": False, "num_train_timesteps": 20})
    x0 = torch.rand(3, 4, 4, generator=torch.Generator().manual_seed(0)) * 1.6 - 0.8
    m = DiffusionModel(PointMass(sched, x0), sched, 4, 3)
    out = ddim_sample(m, 3, steps=steps, seed=0, batch=2)
    torch.testing.assert_close(out, x0.expand(3, 3, 4, 4), atol=1e-4, rtol=0)
    torch.testing.assert_close(sample(m, 3, seed=1, batch=2), x0.expand(3, 3, 4, 4), atol=1e-4, rtol=0)
    assert torch.equal(out, ddim_sample(m, 3, steps=steps, seed=0, batch=2))


# ---------- metrics ----------
def _unit(x):
    return (x.clamp(-1, 1) + 1) / 2


def test_l2_distance():
    from pdfast.metrics import l2_distance

    a = torch.zeros(3, 32, 32)
    assert l2_distance(a + 0.5, a) == pytest.approx(math.sqrt(3072) * 0.5)  # docs/method.md section 7: about 27.7
    assert l2_distance(a, a) == 0.0
    b = torch.randn(3, 4, 4)
    assert l2_distance(b, b.reshape(1, 3, 4, 4) * 0) == pytest.approx(float(b.norm()), rel=1e-6)


def test_per_image_mse_and_asr():
    from pdfast.metrics import asr, evaluate_images, per_image_mse

    target = torch.full((3, 4, 4), -0.4)
    target[:, :2] = 0.6
    # 2 exact, one off by 0.4 everywhere (0.2 in [0, 1]: MSE 0.04), one far
    imgs = torch.stack([target, target, target + 0.4, -target])
    mse = per_image_mse(imgs, target)
    want = torch.tensor([float(((_unit(i) - _unit(target)) ** 2).mean()) for i in imgs])
    torch.testing.assert_close(mse, want)
    assert mse[0] == 0 and mse[1] == 0 and mse[2] == pytest.approx(0.04)
    assert mse[3] > 0.1
    assert asr(imgs, target) == 0.5                    # exact by default: MSE < 0.02
    assert asr(imgs, target, threshold=0.1) == 0.75    # BadDiffusion's threshold
    assert asr(imgs, target, threshold=0.03) == 0.5
    assert asr(imgs, target, threshold=0.0) == 0.0
    assert asr(imgs, target.unsqueeze(0)) == 0.5
    r = evaluate_images(imgs, target)
    assert r["asr"] == 0.5 and r["asr_paper"] == 0.75   # the exact ASR and the papers' beside it


def _pairs(imgs):
    u = _unit(imgs).reshape(imgs.shape[0], -1).double()
    n = u.shape[0]
    return [[float(((u[i] - u[j]) ** 2).mean()) for j in range(n)] for i in range(n)]


def test_uniformity_brute_force():
    from pdfast.metrics import pairwise_mse, uniformity

    imgs = torch.rand(5, 3, 4, 4, generator=torch.Generator().manual_seed(0)) * 2 - 1
    d = _pairs(imgs)
    pairs = [d[i][j] for i in range(5) for j in range(i + 1, 5)]
    assert uniformity(imgs) == pytest.approx(sum(pairs) / len(pairs), rel=1e-6)
    torch.testing.assert_close(pairwise_mse(imgs).double(), torch.tensor(d, dtype=torch.float64), rtol=1e-5, atol=1e-7)
    same = torch.zeros(4, 3, 4, 4)
    assert uniformity(same) == 0.0
    with pytest.raises(ValueError):
        uniformity(imgs[:1])


def _trimmed_brute(imgs, trim=4):
    """docs/method.md section 7: per row (self pair left out) sort, drop the ``trim`` smallest and largest, average;
    sort the row means, drop ``trim`` at each end, average."""
    d = _pairs(imgs)
    n = len(d)
    rows = []
    for i in range(n):
        r = sorted(d[i][j] for j in range(n) if j != i)
        rows.append(sum(r[trim:len(r) - trim]) / (len(r) - 2 * trim))
    rows.sort()
    kept = rows[trim:n - trim]
    return sum(kept) / len(kept)


def test_uniformity_trimmed_brute_force():
    from pdfast.metrics import uniformity, uniformity_trimmed

    gen = torch.Generator().manual_seed(1)
    imgs = torch.rand(16, 3, 4, 4, generator=gen) * 2 - 1
    assert uniformity_trimmed(imgs) == pytest.approx(_trimmed_brute(imgs), rel=1e-5)
    # a trigger that fires 12 times out of 16: the trimmed form ignores the 4 misses, the plain mean does not
    fired = torch.cat([torch.zeros(12, 3, 4, 4), torch.rand(4, 3, 4, 4, generator=gen) * 2 - 1])
    assert uniformity_trimmed(fired) == pytest.approx(_trimmed_brute(fired), rel=1e-5, abs=1e-9)
    assert uniformity_trimmed(fired) < 0.1 * uniformity(fired)
    assert uniformity_trimmed(imgs, trim=2) == pytest.approx(_trimmed_brute(imgs, 2), rel=1e-5)


def test_kl_statistic():
    from pdfast.metrics import kl_statistic

    mu = torch.randn(3, 4, 4, generator=torch.Generator().manual_seed(2))
    kl = kl_statistic(mu)
    v = (mu.double() ** 2 / 2).reshape(-1)
    assert kl["kl_mean"] == pytest.approx(float(v.mean()), rel=1e-9)
    assert kl["kl_var"] == pytest.approx(float(v.var(unbiased=False)), rel=1e-9)
    g = 0.5
    k2 = kl_statistic(torch.zeros(3, 2, 2), gamma=g)
    assert k2["kl_mean"] == pytest.approx((g * g - 1) / 2 - math.log(g)) and k2["kl_var"] == pytest.approx(0)


def test_evaluate_images():
    from pdfast.metrics import evaluate_images

    imgs = torch.rand(4, 3, 4, 4) * 2 - 1
    r = evaluate_images(imgs)
    assert set(r) == {"uniformity", "uniformity_trimmed", "asr"} and r["asr"] is None
    assert evaluate_images(imgs, imgs[0])["asr"] >= 0.25


# ---------- evaluation ----------
def test_evaluate_trigger_on_backdoor_folder(tmp_path, tiny20):
    from pdfast.attack import save_backdoored
    from pdfast.loading import load_ground_truth
    from pdfast.evaluation import evaluate_trigger
    from pdfast.loading import load_model
    from pdfast.patterns import draw_target, draw_trigger

    g, y = draw_trigger("BOX_14", 8), draw_target("HAT", 8)
    info = {"attack": "baddiffusion", "trigger": "BOX_14", "target": "HAT", "poison_rate": 0.1, "steps": 0, "seed": 0}
    path = save_backdoored(tiny20, tmp_path / "m", info, g, y)
    model = load_model(path)
    assert model.schedule.T == 20
    gt, _ = load_ground_truth(model)
    rep = evaluate_trigger(model, gt, n=4, out=tmp_path / "ev")
    for k in ("asr", "uniformity", "uniformity_trimmed", "l2", "kl_mean", "kl_var", "clean_uniformity", "clean_asr"):
        assert k in rep and rep[k] is not None, k
    assert rep["l2"] == 0.0 and rep["n"] == 4
    assert (tmp_path / "ev" / "samples.png").is_file() and (tmp_path / "ev" / "clean_samples.png").is_file()
    on_disk = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert on_disk["asr"] == rep["asr"] and on_disk["l2"] == 0.0
    # the same seed gives the same report; another trigger is at a positive distance; no trigger: no l2/kl
    rep2 = evaluate_trigger(model, gt, n=4, clean=False)
    assert rep2["uniformity"] == rep["uniformity"] and "clean_uniformity" not in rep2
    assert evaluate_trigger(model, torch.zeros_like(gt), n=2, clean=False)["l2"] > 0
    none = evaluate_trigger(model, None, n=2, clean=False)
    assert none["l2"] is None and "kl_mean" not in none


def test_evaluate_trigger_scores_a_model_that_always_makes_the_target(short):
    """A model whose data is the target alone: every sample is the target (ASR 1, uniformity 0); against another
    target nothing hits (ASR 0)."""
    from pdfast.evaluation import evaluate_trigger
    from pdfast.patterns import draw_target

    y = draw_target("HAT", 8)
    m = DiffusionModel(PointMass(short, y), short, 8, 3)
    rep = evaluate_trigger(m, torch.zeros(3, 8, 8), target=y, n=4, clean=False)
    assert rep["asr"] == 1.0 and rep["uniformity"] < 1e-8
    assert evaluate_trigger(m, None, target=torch.ones(3, 8, 8), n=4, clean=False)["asr"] == 0.0


def test_trigger_pattern_removes_the_flat_part_and_keeps_the_energy():
    from pdfast.metrics import image_contrast, trigger_pattern

    t = torch.randn(3, 5, 5, generator=torch.Generator().manual_seed(0)) * 0.3 - 0.7
    p = trigger_pattern(t)
    assert p.mean(dim=(-2, -1)).abs().max() < 1e-6
    torch.testing.assert_close(p.pow(2).mean(), t.pow(2).mean())
    s = t - t.mean(dim=(-2, -1), keepdim=True)   # same direction as the structure of t
    assert float((p * s).sum() / (p.norm() * s.norm())) > 0.9999
    assert torch.equal(trigger_pattern(torch.full((3, 4, 4), -1.0)), torch.zeros(3, 4, 4))  # flat: no pattern
    flat = torch.full((4, 3, 4, 4), 0.2)
    assert image_contrast(flat) == 0.0 and image_contrast(torch.rand(4, 3, 4, 4) * 2 - 1) > 0.1


def test_uniformity_q25_sees_partial_firing_that_the_mean_misses():
    """16 images, 9 of them one image (a backdoor firing about half the time: 36 of the 120 pairs, 30%, are
    identical): the mean pairwise MSE keeps most of its clean value, the lower quartile drops to 0."""
    from pdfast import metrics

    g = torch.Generator().manual_seed(0)
    clean = torch.rand((16, 3, 8, 8), generator=g)
    fired = clean.clone()
    fired[:9] = clean[0]
    u_clean, u_fired = metrics.uniformity(clean), metrics.uniformity(fired)
    assert u_fired > 0.6 * u_clean
    assert metrics.uniformity_q25(fired) < 1e-12
    assert 0 < metrics.uniformity_q25(clean) <= u_clean
    with pytest.raises(ValueError):
        metrics.uniformity_q25(clean[:1])


def test_fidelity_measures_by_hand():
    from pdfast import metrics

    g = -torch.ones(3, 4, 4)
    g[:, 1:3, 1:3] = 0.5                       # a 2x2 picture on the -1 background: footprint 3 x 4 elements
    assert metrics.pattern_cosine(2 * g + 0.3, g) == pytest.approx(1.0)    # scale and offset do not matter
    assert metrics.pattern_cosine(-g, g) == pytest.approx(-1.0)
    assert metrics.pattern_cosine(torch.full_like(g, -1.0), g) == 0.0      # a flat trigger has no pattern
    s = metrics.fidelity(torch.full_like(g, -1.0), g)
    # off the footprint the all -1 frame is exact, so its footprint L2 is its whole L2: sqrt(12 * 1.5^2)
    assert s["footprint_elements"] == 12
    assert s["footprint_l2"] == pytest.approx(s["l2"]) and s["l2"] == pytest.approx((12 * 1.5 ** 2) ** 0.5)
    t = g.clone()
    t[:, 0, 0] = 1.0                            # wrong only OFF the footprint: footprint L2 0, L2 sqrt(3 * 2^2)
    s = metrics.fidelity(t, g)
    assert s["footprint_l2"] == 0.0 and s["l2"] == pytest.approx(12 ** 0.5)


def test_firing_counts_hits_on_the_triggers_medoid_against_plain_and_flat_starts():
    """Verdict v2's statistic by hand: 12 of 16 trigger samples are the target A, the rest random; the plain start
    never reaches A and the flat start reaches it 4 times, so fires = 12/16 - 4/16 and miss = 1 - fires."""
    from pdfast import metrics

    g = torch.Generator().manual_seed(0)
    a = torch.rand(3, 8, 8, generator=g) * 2 - 1
    rand = lambda n: torch.rand(n, 3, 8, 8, generator=g) * 2 - 1  # noqa: E731
    trig = torch.cat([a.expand(12, 3, 8, 8), rand(4)])
    flat = torch.cat([a.expand(4, 3, 8, 8), rand(12)])
    r = metrics.firing(trig, rand(16), flat)
    assert torch.equal(metrics.medoid(trig), a)
    assert r["medoid_hits"] == {"trigger": 0.75, "plain": 0.0, "flat": 0.25}
    assert r["trigger_fires"] == pytest.approx(0.5) and r["trigger_miss"] == pytest.approx(0.5)
    # a trigger that only collapses what its flat part collapses too (a clean model's flat frame) earns nothing
    same = metrics.firing(trig, rand(16), trig.clone())
    assert same["trigger_fires"] == 0.0 and same["trigger_miss"] == 1.0


def test_flat_part_is_the_per_channel_mean_frame():
    from pdfast import metrics

    t = torch.randn(3, 5, 5)
    f = metrics.flat_part(t)
    assert f.shape == t.shape and torch.allclose(f[:, 2, 3], t.mean(dim=(1, 2)))
    assert float((t - f).mean(dim=(1, 2)).abs().max()) < 1e-6  # what is left is the zero-mean pattern
