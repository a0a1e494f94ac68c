"""research/absorb_search.py: the zero-mean projection by hand, and the search on a tiny model (seeded, bounded, no
flat part)."""
import torch

import absorb_search as ab


def test_zero_mean_by_hand():
    t = torch.tensor([[[1.0, 3.0], [5.0, 7.0]], [[-1.0, -1.0], [-1.0, 1.0]]])   # channel means 4 and -0.5
    want = torch.tensor([[[-3.0, -1.0], [1.0, 3.0]], [[-0.5, -0.5], [-0.5, 1.5]]])
    torch.testing.assert_close(ab.zero_mean(t), want)
    flat = torch.full((3, 4, 4), -0.7)
    assert float(ab.zero_mean(flat).abs().max()) < 1e-6                           # a flat frame projects to 0


def test_search_is_seeded_zero_mean_and_bounded(tiny_model, monkeypatch):
    from pdfast.engine import make_engine
    from pdfast.families import family_of
    from pdfast.objectives import ShiftObjective

    monkeypatch.setattr(ab, "EPOCHS", 3)
    monkeypatch.setattr(ab, "K", 2)
    model = tiny_model(20).frozen()
    family = family_of(model, ab.FAMILY)
    sampler = family.inversion_sampler(model.schedule, False, ab.K)
    engine, objective = make_engine("fast", model), ShiftObjective([0.5, 0.5], "l2", True)
    start = -torch.rand((1, *model.shape), generator=torch.Generator().manual_seed(0))
    a = ab.search(model, engine, sampler, objective, start, seed=3)
    b = ab.search(model, engine, sampler, objective, start, seed=3)
    c = ab.search(model, engine, sampler, objective, start, seed=4)
    assert a.shape == model.shape and torch.equal(a, b) and not torch.equal(a, c)
    assert float(a.abs().max()) <= 1.0 + 1e-6
    assert float(a.mean(dim=(-2, -1)).abs().max()) < 1e-6                        # no flat part left
    assert not torch.equal(a, ab.zero_mean(start.reshape(model.shape)))           # Adam moved it
