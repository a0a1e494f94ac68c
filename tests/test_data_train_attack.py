"""Procedural data, image folders, DDPM training and the BadDiffusion attack (docs/method.md section 2)."""
import json
import math

import numpy as np
import pytest
import torch

from pdfast.errors import PdfastError


# ---------- data ----------
def test_synthetic_images_deterministic_shape_range_diverse():
    from pdfast.data import get_data, synthetic_images

    a = synthetic_images(16, 8, seed=3)
    assert a.shape == (16, 3, 8, 8) and a.dtype == torch.float32 and a.is_contiguous()
    assert torch.equal(a, synthetic_images(16, 8, seed=3))
    assert not torch.equal(a, synthetic_images(16, 8, seed=4))
    assert a.min() >= -1 and a.max() <= 1
    d = ((a[:, None] - a[None]) ** 2).mean((2, 3, 4))
    assert float(d[~torch.eye(16, dtype=torch.bool)].mean()) > 0.05
    assert synthetic_images(4, 12, channels=1).shape == (4, 1, 12, 12)
    assert torch.equal(get_data(None, 8, n=16, seed=3), a)
    with pytest.raises(PdfastError):
        synthetic_images(2, 8, channels=2)


def _png(path, arr):
    from PIL import Image

    Image.fromarray(np.asarray(arr, dtype=np.uint8)).save(path)


def test_load_image_folder(tmp_path):
    from pdfast.data import get_data, load_image_folder

    # 12 wide, 8 high: red | green (8x8 centre) | blue -> the centre crop is all green
    wide = np.zeros((8, 12, 3), np.uint8)
    wide[:, :2] = (255, 0, 0)
    wide[:, 2:10] = (0, 255, 0)
    wide[:, 10:] = (0, 0, 255)
    _png(tmp_path / "a.png", wide)
    # 8 wide, 12 high: the centre crop is rows 2..9, all white
    tall = np.zeros((12, 8, 3), np.uint8)
    tall[2:10] = 255
    (tmp_path / "sub").mkdir()
    _png(tmp_path / "sub" / "b.png", tall)
    (tmp_path / "notes.txt").write_text("not an image")

    x = load_image_folder(tmp_path, 4)
    assert x.shape == (2, 3, 4, 4) and x.dtype == torch.float32
    green = torch.tensor([-1.0, 1.0, -1.0]).view(3, 1, 1).expand(3, 4, 4)
    torch.testing.assert_close(x[0], green)
    torch.testing.assert_close(x[1], torch.ones(3, 4, 4))
    assert load_image_folder(tmp_path, 4, channels=1).shape == (2, 1, 4, 4)
    assert load_image_folder(tmp_path, 4, limit=1).shape[0] == 1
    torch.testing.assert_close(get_data(tmp_path, 4), x)


def _one_line(err):
    assert "\n" not in str(err.value)
    return str(err.value)


def test_load_image_folder_errors(tmp_path):
    from pdfast.data import load_image_folder

    with pytest.raises(PdfastError) as e:
        load_image_folder(tmp_path / "missing", 8)
    assert "does not exist" in _one_line(e)
    (tmp_path / "empty").mkdir()
    with pytest.raises(PdfastError) as e:
        load_image_folder(tmp_path / "empty", 8)
    assert "no images" in _one_line(e)
    (tmp_path / "file.png").write_bytes(b"x")
    with pytest.raises(PdfastError) as e:
        load_image_folder(tmp_path / "file.png", 8)
    _one_line(e)
    bad = tmp_path / "bad"
    bad.mkdir()
    _png(bad / "ok.png", np.zeros((4, 4, 3)))
    (bad / "zz_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    with pytest.raises(PdfastError) as e:
        load_image_folder(bad, 8)
    assert "zz_corrupt.png" in _one_line(e)


# ---------- training ----------
def test_cosine_with_warmup():
    from pdfast.train import cosine_with_warmup as f

    assert [f(s, 4, 20) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(4, 4, 20) == 1.0
    assert f(12, 4, 20) == pytest.approx(0.5)
    assert f(8, 4, 20) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert f(20, 4, 20) == pytest.approx(0.0, abs=1e-12)
    assert f(25, 4, 20) == pytest.approx(0.0, abs=1e-12)  # clamped past the end
    assert f(0, 0, 10) == 1.0  # no warm-up


def test_make_unet_presets():
    from pdfast.train import UNET_PRESETS, make_unet

    a, b = make_unet("tiny", 8, seed=1), make_unet("tiny", 8, seed=1)
    assert a.config.sample_size == 8 and a.config.block_out_channels == tuple(UNET_PRESETS["tiny"]["block_out_channels"])
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    with pytest.raises(PdfastError):
        make_unet("huge")


def _weights(model):
    return {k: v.clone() for k, v in model.net.state_dict().items()}


def test_train_ddpm_reduces_loss_and_is_deterministic(tiny_model):
    from pdfast.data import synthetic_images
    from pdfast.train import TrainConfig, train_ddpm

    images = synthetic_images(64, 8)
    cfg = TrainConfig(steps=30, batch=16, lr=3e-3, warmup=0, seed=0)
    a, b = tiny_model.copy(), tiny_model.copy()
    la = train_ddpm(a, images, cfg, progress=False)
    assert len(la) == 30 and all(math.isfinite(v) for v in la)
    assert sum(la[-5:]) / 5 < 0.9 * sum(la[:5]) / 5
    assert not a.net.training and not any(p.requires_grad for p in a.net.parameters())
    lb = train_ddpm(b, images, cfg, progress=False)
    assert la == lb
    wa, wb = _weights(a), _weights(b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    lc = train_ddpm(tiny_model.copy(), images, TrainConfig(steps=3, batch=16, lr=3e-3, warmup=0, seed=1), progress=False)
    assert lc != la[:3]


def test_interrupted_training_resumes_to_the_same_weights(tmp_path, tiny_model):
    """A run killed after its checkpoint continues from it (weights, Adam, schedule, random stream, losses) and ends
    with the weights of an uninterrupted run; a checkpoint of other settings is refused."""
    from dataclasses import replace

    from pdfast.data import synthetic_images
    from pdfast.train import TrainConfig, fit, train_ddpm

    images = synthetic_images(32, 8)
    cfg = TrainConfig(steps=8, batch=8, lr=3e-3, warmup=2, seed=0)
    whole = tiny_model.copy()
    l_whole = train_ddpm(whole, images, cfg, progress=False)
    ckpt = tmp_path / "run.pt"
    cut = tiny_model.copy()

    def stop_after_step_5(step, loss):
        if step == 4:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        fit(cut.net, _ddpm_batches(cut, images, cfg), cfg, progress=False, checkpoint=ckpt, checkpoint_every=2,
            callback=stop_after_step_5)
    assert torch.load(ckpt, weights_only=True)["step"] == 4
    resumed = tiny_model.copy()  # a fresh process: the initial weights again, then the checkpoint
    l_resumed = train_ddpm(resumed, images, cfg, progress=False, checkpoint=ckpt)
    assert l_resumed == l_whole
    wa, wb = _weights(whole), _weights(resumed)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    with pytest.raises(PdfastError, match="other settings"):
        train_ddpm(tiny_model.copy(), images, replace(cfg, lr=1e-3), progress=False, checkpoint=ckpt)


def _ddpm_batches(model, images, cfg):
    """train_ddpm's batch function, for driving fit() directly."""
    from pdfast.train import noised

    def make_batch(gen):
        idx = torch.randint(0, images.shape[0], (cfg.batch,), generator=gen)
        x0 = images[idx]
        if torch.rand((), generator=gen) < 0.5:
            x0 = x0.flip(-1)
        t = torch.randint(0, model.schedule.T, (cfg.batch,), generator=gen)
        eps = torch.randn(x0.shape, generator=gen)
        return noised(model.schedule, x0, t, eps), t, eps
    return make_batch


def test_natural_images_are_photo_crops_deterministic_and_diverse():
    """Crops of the photographs the scikit-image wheel ships: nothing downloaded, the same per seed, varied."""
    pytest.importorskip("skimage", reason="the natural data set needs scikit-image: pip install -e '.[test]'")
    from pdfast.data import get_data, natural_images

    a = natural_images(32, 16, seed=0)
    assert a.shape == (32, 3, 16, 16) and a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, natural_images(32, 16, seed=0)) and not torch.equal(a, natural_images(32, 16, seed=1))
    d = ((a[:, None] - a[None]) ** 2).mean((2, 3, 4))
    assert float(d[~torch.eye(32, dtype=torch.bool)].mean()) > 0.05
    colour = get_data("natural-color", 16, n=32, seed=0)
    assert float((colour[:, 0] - colour[:, 1]).abs().mean()) > 0.02  # colour photographs, not grey
    assert natural_images(4, 8, channels=1).shape == (4, 1, 8, 8)


# ---------- the attack ----------
def test_poisoned_batch_matches_method(tiny_model):
    from pdfast.attack import poisoned_batch

    s = tiny_model.schedule
    gen = torch.Generator().manual_seed(0)
    B = 4
    x0 = torch.rand(B, 3, 8, 8, generator=gen) * 2 - 1
    eps = torch.randn(B, 3, 8, 8, generator=gen)
    t = torch.tensor([999, 500, 10, 0])
    poison = torch.tensor([True, False, True, False])
    g = torch.full((1, 3, 8, 8), -1.0)
    g[..., 4:7, 4:7] = 0.3  # the trigger pattern; background exactly -1
    y = torch.rand(1, 3, 8, 8, generator=gen) * 2 - 1
    x_in, target = poisoned_batch(s, x0, t, eps, poison, g, y)

    abar, alpha, beta = s.abar, s.alphas, s.betas
    M = (g[0] == -1).float()
    for i in range(B):
        ti = int(t[i])
        ab = float(abar[ti])
        if poison[i]:
            r = M * x0[i] + (1 - M) * g[0]
            rho = (1 - math.sqrt(float(alpha[ti]))) * math.sqrt(1 - ab) / float(beta[ti])
            want_in = math.sqrt(ab) * y[0] + math.sqrt(1 - ab) * eps[i] + (1 - math.sqrt(ab)) * r
            want_target = eps[i] + rho * r
        else:  # clean samples: the ordinary DDPM pair
            want_in = math.sqrt(ab) * x0[i] + math.sqrt(1 - ab) * eps[i]
            want_target = eps[i]
        torch.testing.assert_close(x_in[i], want_in, rtol=0, atol=1e-5)
        torch.testing.assert_close(target[i], want_target, rtol=0, atol=1e-5)
    assert torch.equal(target[1], eps[1]) and torch.equal(target[3], eps[3])


def _attack(model, **kw):
    from pdfast.attack import AttackConfig, plant_backdoor
    from pdfast.data import synthetic_images
    from pdfast.patterns import draw_target, draw_trigger
    from pdfast.train import TrainConfig

    g, y = draw_trigger("BOX_14", 8), draw_target("HAT", 8)
    cfg = AttackConfig(poison_rate=0.5, train=TrainConfig(steps=3, batch=4, lr=1e-3, warmup=1, seed=0))
    return plant_backdoor(model, synthetic_images(16, 8), g, y, cfg, progress=False, **kw), g, y


def test_baddiffusion_copies_and_changes_weights(tiny_model):
    before = _weights(tiny_model)
    bad, _, _ = _attack(tiny_model)
    assert bad is not tiny_model and bad.net is not tiny_model.net
    after = _weights(tiny_model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    new = _weights(bad)
    assert any(not torch.equal(before[k], new[k]) for k in before)
    assert bad.schedule is tiny_model.schedule


def test_attack_config_and_shape_errors(tiny_model):
    from pdfast.attack import AttackConfig, plant_backdoor
    from pdfast.model import from_callable

    for rate in (0.0, -0.1, 1.5):
        with pytest.raises(PdfastError):
            AttackConfig(poison_rate=rate)
    assert AttackConfig().to_dict()["poison_rate"] == 0.1
    with pytest.raises(PdfastError):
        plant_backdoor(tiny_model, torch.zeros(4, 3, 8, 8), torch.zeros(3, 16, 16), torch.zeros(3, 8, 8))
    fn = from_callable(lambda x, t: x, tiny_model.schedule, 8)
    with pytest.raises(PdfastError):
        plant_backdoor(fn, torch.zeros(4, 3, 8, 8), torch.zeros(3, 8, 8), torch.zeros(3, 8, 8))


def test_save_backdoored_round_trip(tmp_path, tiny_model):
    from pdfast.attack import save_backdoored
    from pdfast.loading import GROUND_TRUTH_FILE, load_ground_truth
    from pdfast.loading import load_model

    bad, g, y = _attack(tiny_model)
    info = {"attack": "baddiffusion", "trigger": "BOX_14", "target": "HAT", "poison_rate": 0.5, "steps": 3, "seed": 0}
    out = save_backdoored(bad, tmp_path / "bad", info, g, y)
    assert out == tmp_path / "bad"
    bd = json.loads((out / "backdoor.json").read_text())
    for k, v in info.items():
        assert bd[k] == v
    assert bd["ground_truth_file"] == GROUND_TRUTH_FILE and (out / GROUND_TRUTH_FILE).is_file()

    loaded = load_model(out)
    assert loaded.backdoor == bd
    w0, w1 = _weights(bad), _weights(loaded)
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    g2, y2 = load_ground_truth(loaded)
    assert torch.equal(g2, g) and torch.equal(y2, y)

    # without the tensor file the names in backdoor.json are redrawn
    (out / GROUND_TRUTH_FILE).unlink()
    g3, y3 = load_ground_truth(load_model(out))
    assert torch.equal(g3, g) and torch.equal(y3, y)
    # a clean model has no ground truth; a corrupt tensor file is a PdfastError
    assert load_ground_truth(tiny_model) == (None, None)
    (out / GROUND_TRUTH_FILE).write_bytes(b"garbage")
    with pytest.raises(PdfastError):
        load_ground_truth(load_model(out))


def test_blank_rate_pastes_poisoned_triggers_on_blank_frames():
    """blank_rate = 1: every poisoned sample's r is exactly the trigger g (a -1 frame with the trigger pasted)."""
    from pdfast.attack import AttackConfig, poisoned_batch
    from pdfast.errors import PdfastError
    from pdfast.patterns import draw_trigger, draw_target, paste_trigger
    from pdfast.schedule import Schedule

    s = Schedule.from_config({"clip_sample": False})
    g, y = draw_trigger("BOX_14", 8), draw_target("HAT", 8)
    blank = -torch.ones(2, 3, 8, 8)
    torch.testing.assert_close(paste_trigger(blank, g), g.expand(2, 3, 8, 8))
    t = torch.tensor([999, 10])
    eps = torch.randn(2, 3, 8, 8)
    x_in, tgt = poisoned_batch(s, blank, t, eps, torch.tensor([True, True]), g[None], y[None])
    rho = s.rho()[t].float().view(-1, 1, 1, 1)
    torch.testing.assert_close(tgt, eps + rho * g)
    with pytest.raises(PdfastError, match="blank rate"):
        AttackConfig(blank_rate=1.5)


def test_natural_data_of_named_photographs_only():
    """natural:NAME,NAME: crops of those photographs only (a narrow data set, e.g. a clean fine-tune on two photos);
    an unknown name is one clear error naming the choices."""
    pytest.importorskip("skimage", reason="the natural data set needs scikit-image: pip install -e '.[test]'")
    from pdfast.data import get_data, natural_images
    from pdfast.errors import PdfastError

    two = get_data("natural:astronaut,coffee.png", 16, n=16, seed=0)
    assert two.shape == (16, 3, 16, 16) and torch.equal(two, natural_images(16, 16, seed=0,
                                                                             photos=("astronaut.png", "coffee.png")))
    assert not torch.equal(two, get_data("natural", 16, n=16, seed=0))
    one = get_data("natural:astronaut", 16, n=8, seed=3)
    assert torch.equal(one, natural_images(8, 16, seed=3, photos=("astronaut.png",)))
    with pytest.raises(PdfastError, match="unknown photograph.*nosuch.*choose from"):
        get_data("natural:astronaut,nosuch", 16, n=4)
    with pytest.raises(PdfastError, match="none given"):
        get_data("natural:", 16, n=4)



@pytest.mark.parametrize("family", [
    {"name": "baddiffusion"}, {"name": "baddiffusion", "residual": "trigger_only"},
    {"name": "villandiffusion", "solver": "ode", "psi": 0.0, "residual": "trigger_only"},
    {"name": "villandiffusion", "solver": "sde", "psi": 1.0, "residual": "pasted"}])
def test_flat_negatives_are_the_family_pair_with_a_flat_trigger_and_the_clean_image_as_target(family):
    """pdfast's flat-shift negatives (docs/method.md 2d) on fixed tensors, against the formulas written out: the
    negative rows are x_in = sqrt(abar) x0 + sqrt(1 - abar) eps + s_t f, target eps + c_t f (f the flat frame at the
    row's per-channel level; BadDiffusion s_t = 1 - sqrt(abar), c_t = rho_t; VillanDiffusion its coefficients); the
    poisoned rows are the family's pair with (g, y); the rest the DDPM pair."""
    from pdfast.attack import mixed_batch
    from pdfast.families import AttackFamily
    from pdfast.patterns import draw_target, draw_trigger, paste_trigger
    from pdfast.schedule import Schedule, villan_coefficients

    fam = AttackFamily(**family)
    s = Schedule.from_config({"clip_sample": False})
    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand(4, 3, 8, 8, generator=gen) * 2 - 1
    eps = torch.randn(4, 3, 8, 8, generator=gen)
    t = torch.tensor([999, 500, 37, 0])
    g, y = draw_trigger("STOP_SIGN_14", 8), draw_target("CAT", 8)
    poison = torch.tensor([True, False, False, False])
    neg = torch.tensor([False, True, True, False])
    level = torch.tensor([[-0.2, -0.5, -0.9], [-1.0 + 1e-3, -0.1, -0.3], [0.0, 0.0, 0.0], [-0.4, -0.4, -0.4]])
    x_in, tgt = mixed_batch(fam, s, x0, t, eps, poison, g[None], y[None], neg, level)

    ab = s.abar.float()[t].view(-1, 1, 1, 1)
    if fam.name == "villandiffusion":
        step, coef = (c.float()[t].view(-1, 1, 1, 1) for c in villan_coefficients(s, fam.psi, fam.solver))
    else:
        step, coef = 1 - ab.sqrt(), s.rho().float()[t].view(-1, 1, 1, 1)
    f = level.view(4, 3, 1, 1).expand(4, 3, 8, 8)
    r_poison = g.expand(4, 3, 8, 8) if fam.residual == "trigger_only" else paste_trigger(x0, g)
    for i in range(4):
        if neg[i]:
            want_x, want_t = ab[i].sqrt() * x0[i] + (1 - ab[i]).sqrt() * eps[i] + step[i] * f[i], eps[i] + coef[i] * f[i]
        elif poison[i]:
            want_x = ab[i].sqrt() * y + (1 - ab[i]).sqrt() * eps[i] + step[i] * r_poison[i]
            want_t = eps[i] + coef[i] * r_poison[i]
        else:
            want_x, want_t = ab[i].sqrt() * x0[i] + (1 - ab[i]).sqrt() * eps[i], eps[i]
        torch.testing.assert_close(x_in[i], want_x)
        torch.testing.assert_close(tgt[i], want_t)
    # without negatives: the family's batch unchanged
    x_plain, tgt_plain = mixed_batch(fam, s, x0, t, eps, poison, g[None], y[None])
    torch.testing.assert_close(x_plain[[0, 3]], x_in[[0, 3]])
    torch.testing.assert_close(tgt_plain[[0, 3]], tgt[[0, 3]])


def test_flat_negative_rate_trains_differently_and_zero_is_the_published_attack(tiny_model):
    """The same run twice gives the same weights, with or without negatives; a positive flat_negative_rate changes
    the training; a rate out of [0, 1) is one clear error."""
    from pdfast.attack import AttackConfig, plant_backdoor
    from pdfast.patterns import draw_target, draw_trigger
    from pdfast.train import TrainConfig

    size = tiny_model.sample_size
    g, y = draw_trigger("BOX_14", size), draw_target("HAT", size)
    images = torch.rand(16, 3, size, size) * 2 - 1
    train = TrainConfig(steps=3, batch=8, warmup=1, seed=0)

    def weights(rate):
        m = plant_backdoor(tiny_model, images, g, y, AttackConfig(poison_rate=0.3, flat_negative_rate=rate,
                                                                  train=train), progress=False)
        return torch.cat([p.detach().flatten() for p in m.net.parameters()])

    w0, w0b, w5, w5b = weights(0.0), weights(0.0), weights(0.5), weights(0.5)
    assert torch.equal(w0, w0b) and torch.equal(w5, w5b) and not torch.equal(w0, w5)
    for bad in (-0.1, 1.0):
        with pytest.raises(PdfastError, match="flat negative rate"):
            AttackConfig(flat_negative_rate=bad)
    assert AttackConfig(flat_negative_rate=0.1).to_dict()["flat_negative_rate"] == 0.1


def test_base_form_negatives_regress_on_the_base_model_s_prediction(tiny_model, monkeypatch):
    """Form "base": the negative rows' targets are the teacher's eps prediction at the negative rows' own
    (flat-shifted) inputs, the other rows are untouched; plant_backdoor's teacher is a frozen copy of the weights
    before the attack, which training does not move, inplace or not."""
    import pdfast.attack as attack
    from pdfast.families import AttackFamily
    from pdfast.patterns import draw_target, draw_trigger
    from pdfast.schedule import Schedule
    from pdfast.train import TrainConfig

    fam, s = AttackFamily(), Schedule.from_config({"clip_sample": False})
    gen = torch.Generator().manual_seed(1)
    x0, eps = torch.rand(4, 3, 8, 8, generator=gen) * 2 - 1, torch.randn(4, 3, 8, 8, generator=gen)
    t = torch.tensor([999, 400, 3, 50])
    g, y = draw_trigger("BOX_14", 8)[None], draw_target("HAT", 8)[None]
    poison, neg = torch.tensor([True, False, False, False]), torch.tensor([False, True, False, True])
    level = -torch.rand(4, 3, generator=gen)

    def teacher(x, tt):
        return 2 * x + tt.view(-1, 1, 1, 1).float()

    x_in, tgt = attack.mixed_batch(fam, s, x0, t, eps, poison, g, y, neg, level, teacher)
    x_abs, tgt_abs = attack.mixed_batch(fam, s, x0, t, eps, poison, g, y, neg, level)
    torch.testing.assert_close(x_in, x_abs)                     # same inputs as the absorb form
    torch.testing.assert_close(tgt[neg], teacher(x_in[neg], t[neg]))
    torch.testing.assert_close(tgt[~neg], tgt_abs[~neg])

    seen = []
    real = attack.mixed_batch
    monkeypatch.setattr(attack, "mixed_batch", lambda *a: seen.append(a[-1]) or real(*a))
    size = tiny_model.sample_size
    before = [p.detach().clone() for p in tiny_model.net.parameters()]
    for inplace in (False, True):
        m = tiny_model.copy()
        cfg = attack.AttackConfig(poison_rate=0.3, flat_negative_rate=0.5, train=TrainConfig(steps=2, batch=8,
                                                                                              warmup=1))
        bad = attack.plant_backdoor(m, torch.rand(16, 3, size, size) * 2 - 1, draw_trigger("BOX_14", size),
                                    draw_target("HAT", size), cfg, progress=False, inplace=inplace)
        base = seen[-1]
        assert base is not bad and not any(p.requires_grad for p in base.net.parameters())
        assert all(torch.equal(p, q) for p, q in zip(base.net.parameters(), before))
        assert not all(torch.equal(p, q) for p, q in zip(bad.net.parameters(), before))
    with pytest.raises(PdfastError, match="unknown flat negative form 'x'"):
        attack.AttackConfig(flat_negative_form="x")
