"""The poisoned-pair search (pdfast.pair, docs/method.md 5.11): its residual is the attack's own training pair, zero
for a network that learned the pairs of (g, y) exactly, and its search recovers (g, y) there; the families without a
closed form, and the options' bad values, are refused in one line."""
import pytest
import torch

from pdfast.errors import PdfastError
from pdfast.families import AttackFamily, parse_family

ODE = AttackFamily("villandiffusion", solver="ode", residual="trigger_only")


def _learned(schedule, family, g, y):
    """A network that answers every poisoned pair of (g, y) exactly: eps_theta(x_t) = eps + c_t g, with the eps that
    x_t = sqrt(abar_t) y + sqrt(1 - abar_t) eps + rho_hat_t g implies."""
    from pdfast.model import from_callable
    from pdfast.pair import pair_coefficients

    rho_hat, c = pair_coefficients(family, schedule)
    ab = schedule.abar.to(torch.float32)

    def net(x, t):
        t = t.expand(x.shape[0])
        a, rho, coef = (v[t].view(-1, 1, 1, 1) for v in (ab, rho_hat, c))
        return (x - a.sqrt() * y - rho * g) / (1 - a).sqrt() + coef * g
    return from_callable(net, schedule, 8)


def _truth():
    gen = torch.Generator().manual_seed(0)
    g = torch.full((1, 3, 8, 8), -1.0)
    g[..., 4:7, 4:7] = 1.0
    return g, torch.rand((1, 3, 8, 8), generator=gen) * 2 - 1


@pytest.mark.parametrize("family", [ODE, AttackFamily("villandiffusion", psi=0.5, residual="trigger_only"),
                                    AttackFamily("baddiffusion", residual="trigger_only")])
def test_residual_is_the_attacks_own_pair(tiny_model, family):
    """pair_residual's input and target are pdfast.attack.villan_batch's poisoned pair: zero at the truth for a
    network that learned those pairs, positive at another trigger or target."""
    from pdfast.attack import villan_batch
    from pdfast.pair import pair_coefficients, pair_residual

    s = tiny_model.schedule
    g, y = _truth()
    model = _learned(s, family, g, y)
    rho_hat, c = pair_coefficients(family, s)
    eps = torch.randn((4, 3, 8, 8), generator=torch.Generator().manual_seed(1))
    fam = family if family.name == "villandiffusion" else AttackFamily("villandiffusion", residual="trigger_only")
    for t in (300, 500):
        x_in, target = villan_batch(fam, s, y.expand(4, -1, -1, -1), torch.full((4,), t), eps,
                                    torch.ones(4, dtype=torch.bool), g, y)
        torch.testing.assert_close(model.eps(x_in, torch.tensor(t)), target, rtol=0, atol=1e-4)
    ts = torch.tensor([300, 500, 120, 590])
    assert float(pair_residual(model, g, y, eps, ts, rho_hat, c)) < 1e-8
    assert float(pair_residual(model, g, -y, eps, ts, rho_hat, c)) > 0.01
    assert float(pair_residual(model, g.flip(-1), y, eps, ts, rho_hat, c)) > 0.01


def test_search_recovers_trigger_and_target(tiny_model):
    """From a patch start over the trigger's quarter, the search walks to the learned (g, y)."""
    from pdfast.metrics import pattern_cosine
    from pdfast.pair import pair_search

    g, y = _truth()
    model = _learned(tiny_model.schedule, ODE, g, y)
    start = torch.full((3, 8, 8), -1.0)
    start[:, 5:8, 5:8] = 1.0
    g2, y2, r = pair_search(model, ODE, start, 300, torch.Generator().manual_seed(0), "cpu")
    assert r < 0.02 and pattern_cosine(g2, g) > 0.95, (r, pattern_cosine(g2, g))
    assert float((y2 - y).abs().mean()) < 0.1


@pytest.mark.parametrize("spec", ["trojdiff", "villandiffusion:solver=ode", "baddiffusion"])
def test_families_without_a_closed_pair_are_refused(tiny_model, spec):
    from pdfast.pair import pair_coefficients

    with pytest.raises(PdfastError, match="--pair-epochs needs a trigger-only"):
        pair_coefficients(parse_family(spec), tiny_model.schedule)


def test_a_family_without_a_pair_is_refused_before_any_work(tiny_model, monkeypatch):
    """--pair-epochs on a pasted-residual model fails in pdfast.invert before the inversion starts."""
    import pdfast
    from pdfast import inversion

    def no_work(*a, **k):
        raise AssertionError("the inversion ran")

    monkeypatch.setattr(inversion, "run_inversion", no_work)
    monkeypatch.setattr(inversion, "scale_table", no_work)
    with pytest.raises(PdfastError, match="residual pasted"):
        pdfast.invert(tiny_model, pair_epochs=5, evaluate=False)


def test_presets_and_option_checks():
    from pdfast.config import InversionConfig

    assert parse_family("villandiffusion:solver=ode,residual=trigger_only").preset_key() == "villandiffusion-ode"
    assert parse_family("villandiffusion:solver=ode").preset_key() == "villandiffusion"  # pasted: no closed pair
    assert InversionConfig().resolved("villandiffusion-ode").pair_epochs == 300
    assert InversionConfig().resolved("baddiffusion").pair_epochs == 0
    assert InversionConfig(preset="paper").resolved("villandiffusion-ode").pair_epochs == 0
    assert InversionConfig(method="elijah").resolved("villandiffusion-ode").pair_epochs == 0
    with pytest.raises(PdfastError, match="--pair-epochs -1 must be 0"):
        InversionConfig(pair_epochs=-1).resolved()
    with pytest.raises(PdfastError, match="--pair-epochs needs --select firing"):
        InversionConfig(pair_epochs=5, select="last", patch_starts="none").resolved()


@pytest.mark.parametrize("gate", [float("inf"), 0.0])
def test_inversion_adds_the_pair_candidates_below_the_gate(tiny_model, monkeypatch, gate):
    """pdfast.invert with --pair-epochs: every pair-<position> search is scored on the fixed batch, and only those
    below PAIR_R_MAX join the firing selection; their network calls are recorded."""
    import pdfast
    from pdfast import pair

    monkeypatch.setattr(pair, "PAIR_R_MAX", gate)
    fam = "villandiffusion:solver=ode,residual=trigger_only"
    res = pdfast.invert(tiny_model, steps=2, epochs=2, refine_epochs=1, batch=4, patch_starts="none",
                        pair_epochs=2, attack_family=fam, evaluate=False, surrogate_steps=2, surrogate_n_images=8,
                        surrogate_pool_steps=2, surrogate_calib_batch=4)
    sel = res.inversion.selection
    names = [f"pair-{p}" for p in ("tl", "tr", "bl", "br", "c")]
    assert list(sel["pair_residual"]) == names and sel["pair_gate"] == gate, sel
    assert set(sel["fires"]) == {"search", "refine", *(names if gate > 0 else [])}, sel
    assert res.inversion.timings["stages"]["pair-br"] == 2


def test_pair_score_is_fixed_and_zero_at_a_learned_pair(tiny_model):
    from pdfast.pair import pair_score

    g, y = _truth()
    model = _learned(tiny_model.schedule, ODE, g, y)
    assert pair_score(model, ODE, g, y) < 1e-8
    assert pair_score(model, ODE, g, -y) == pair_score(model, ODE, g, -y) > 0.01
