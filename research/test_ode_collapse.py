"""research/ode_collapse.py: the contrast loss by hand on fixed tensors, and the search on a tiny model (bounded,
seeded, its trace every 10 steps and at the last)."""
import torch

import ode_collapse as oc


def test_contrast_loss_is_log_spread_minus_log_distance_to_the_flat_part():
    t = torch.tensor([[[[0.0, 1.0]]], [[[2.0, 1.0]]]])            # 2 samples, 1x1x2 pixels
    f = torch.zeros_like(t)
    var = ((0 - 1) ** 2 + (2 - 1) ** 2) / 1 / 2                  # unbiased var per pixel: 2 and 0, mean 1
    dist = (0 + 1 + 4 + 1) / 4
    assert torch.isclose(oc.contrast_loss(t, f), torch.log(torch.tensor(var)) - torch.log(torch.tensor(dist)))
    assert oc.contrast_loss(t, t + 1.0) > oc.contrast_loss(t, t + 2.0)   # farther from the flat part: lower


def test_ddim_out_matches_the_sampler_run_without_gradient(tiny_model):
    from pdfast.chain import DDIMSampler

    model = tiny_model(20)
    sampler = DDIMSampler(model.schedule, 5)
    x = torch.randn((2, *model.shape), generator=torch.Generator().manual_seed(0))
    want = x.clone()
    with torch.no_grad():
        for i, t in enumerate(sampler.timesteps):
            want = sampler.step(i, want, model.eps(want, torch.full((2,), int(t), dtype=torch.long)))
        assert torch.equal(oc.ddim_out(model, sampler, x), want.clamp(-1, 1))


def test_collapse_invert_is_seeded_and_bounded(tiny_model):
    model = tiny_model(20)
    a, trace = oc.collapse_invert(model, seed=3, iters=3, batch=4, steps=5)
    b, _ = oc.collapse_invert(model, seed=3, iters=3, batch=4, steps=5)
    assert a.shape == model.shape and torch.equal(a, b)
    assert float(a.abs().max()) <= 1.0 and [r[0] for r in trace] == [0, 2]
