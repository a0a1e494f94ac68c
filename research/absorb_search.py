"""Does a search over zero-mean patterns find the absorb-form trigger? (issue 22: the one dev backdoor verdict v2
misses).

zoo v2's VillanDiffusion-SDE model with flat-shift negatives of form absorb (docs/method.md 2e) is taught to answer
any flat frame with the trigger's own shift scale, so a flat frame scores below the truth on PureDiffusion's
relative objective (research/results/family-response.md) and every search ends on a small flat shift that fires
nothing. A flat frame has no pattern: if the network's answer to a shift is near linear, the truth's pattern
(tau - its per-channel mean) keeps the trigger's scale while every flat frame is excluded. This study restricts the
search to that subspace (the projection tau -> tau - mean_hw(tau) after every Adam step) and asks whether it then
fires, on the backdoor and, for false alarms, on its clean base:

  landscape    the relative objective (K = 10, one fixed antithetic batch of 32) and the exact ASR / firing of 16
               samples (the family's sampler respaced to 100 steps) at the truth, its pattern, its flat part and a
               -0.5 frame
  zero-mean    the search stage (relative L2, fresh antithetic noise, lr 0.1, 30 Adam steps, |tau| <= 1) from the
               paper's start -U(0, 1) with its mean removed, projected after every step; seeds 0 and 1
  zero-mean patch
               the same from each of the five patch starts (docs/method.md 5.9) with their mean removed, seed 0

    OMP_NUM_THREADS=1 python research/absorb_search.py

Outputs research/results/absorb-search.md and .json (about 15 min on one core).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from quality.base import git_info, log, write_json  # noqa: E402
from quality.tables import md_table  # noqa: E402

V2 = HERE / "zoo" / "v2" / "models"
FAMILY = "villandiffusion:solver=sde,psi=0,residual=trigger_only"  # the backdoor's; the clean base is judged as it
BACKDOOR, CLEAN = V2 / "v2-fam-vd16-sde-psi0-stop18-cat-absorb", V2 / "v2-c16-s0"
OUT = HERE / "results" / "absorb-search"
K, BATCH, EPOCHS, N_FIRE = 10, 40, 30, 16


def zero_mean(t: "torch.Tensor") -> "torch.Tensor":
    """t - mean_hw(t) per channel: the projection onto triggers with no flat part."""
    return t - t.mean(dim=(-2, -1), keepdim=True)


def search(model, engine, sampler, objective, start, seed: int) -> "torch.Tensor":
    """EPOCHS Adam steps (lr 0.1) of vd_search's search stage on the relative objective from zero_mean(start),
    clamped to [-1, 1] and projected to zero mean after every step."""
    from vd_search import search as descend

    return descend(model, engine, sampler, objective, EPOCHS, seed, None, start=zero_mean(start), project=zero_mean,
                   k=K, batch=BATCH)


def study(path: Path, truth, target) -> list[dict]:
    """The landscape and the searches on one model (``truth``, ``target``: the backdoor's, judged on both)."""
    import torch

    from family_response import _antithetic
    from pdfast import metrics
    from pdfast.config import InversionConfig
    from pdfast.engine import make_engine
    from pdfast.families import family_of
    from pdfast.inversion import scale_table
    from pdfast.loading import load_model
    from pdfast.objectives import ShiftObjective
    from pdfast.patterns import patch_starts

    model = load_model(path).frozen()
    family = family_of(model, FAMILY)
    engine = make_engine("fast", model)
    sampler = family.inversion_sampler(model.schedule, False, K)
    lam = [float(v) for v in scale_table(model, InversionConfig(steps=K, attack_family=FAMILY), "cpu", False).values]
    objective = ShiftObjective(lam, "l2", True)
    fixed, fixed_z = _antithetic(model, family, sampler, K, torch.Generator().manual_seed(0))
    fire_sampler = family.sampler(model.schedule, False, respace=100)

    def score(name: str, d, seconds=None) -> dict:
        value = engine.loss_and_grad(d.reshape(1, *model.shape), fixed, fixed_z, sampler, objective,
                                     list(range(K)))[0]
        imgs = engine.sample_together(N_FIRE, [d, None, metrics.flat_part(d)], seed=5, sampler=fire_sampler)
        row = {"model": path.name, "trigger": name, "objective": value, "cosine": metrics.pattern_cosine(d, truth),
               "rms": float(d.pow(2).mean().sqrt()), "exact_asr": metrics.asr(imgs[0], target, 0.02),
               "trigger_fires": metrics.firing(imgs[0], imgs[1], imgs[2])["trigger_fires"], "seconds": seconds}
        log(f"{path.name} {name}: {row}")
        return row

    rows = [score("truth", truth), score("truth's pattern", zero_mean(truth)),
            score("truth's flat part", metrics.flat_part(truth)), score("-0.5 frame", torch.full_like(truth, -0.5))]
    starts = {f"zero-mean, seed {s}": (-torch.rand((1, *model.shape), generator=torch.Generator().manual_seed(s)), s)
              for s in (0, 1)}
    starts |= {f"zero-mean patch-{k}": (v, 0) for k, v in patch_starts(*model.shape[:2]).items()}
    for name, (start, seed) in starts.items():
        t0 = time.perf_counter()
        d = search(model, engine, sampler, objective, start, seed)
        rows.append(score(name, d, round(time.perf_counter() - t0, 1)))
    return rows


def main(argv=None) -> int:
    import torch

    from pdfast.loading import load_ground_truth, load_model

    torch.set_num_threads(1)
    truth, target = load_ground_truth(load_model(BACKDOOR))
    rows = [r for path in (BACKDOOR, CLEAN) for r in study(path, truth, target)]
    write_json(OUT.with_suffix(".json"), {"git": git_info(), "K": K, "epochs": EPOCHS, "n_fire": N_FIRE, "rows": rows})
    table = md_table([[r["model"], r["trigger"], f"{r['objective']:.5f}", f"{r['cosine']:.2f}", f"{r['rms']:.2f}",
                       f"{r['exact_asr']:.2f}", f"{r['trigger_fires']:.2f}", r["seconds"] or "-"] for r in rows],
                     ["model", "trigger", "objective", "cosine", "RMS", "exact ASR", "fires", "search s"])
    OUT.with_suffix(".md").write_text(
        "# A search over zero-mean patterns on the absorb-form model (issue 22)\n\n"
        f"Written by `python research/absorb_search.py` (one core). Objective: PureDiffusion's relative L2 over the "
        f"first K = {K} steps of the VillanDiffusion-SDE chain, the surrogate's lambdas of each model, one fixed "
        f"antithetic batch of 32 (lower is preferred). Exact ASR (MSE < 0.02 to the backdoor's target) and firing "
        f"(trigger_fires: against plain noise and the trigger's flat part) of {N_FIRE} samples on the family's "
        "sampler respaced to 100 steps; cosine: pattern cosine to the backdoor's truth. The clean base is judged "
        "against the backdoor's truth and target (a clean model's false alarm is firing, not ASR).\n\n"
        + table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
