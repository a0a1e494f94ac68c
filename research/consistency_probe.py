"""Does a denoising-consistency objective find the VillanDiffusion-SDE trigger that the shift objective misses
(issue 20)? A probe of pdfast's own form of the idea the PureDiffusion journal version adds as its second loss
(a backdoor makes the generated images agree whatever the noise); not that paper's formula.

The objective, on the family's sampler respaced to R ancestral steps, from x_T = eps + delta and, with the same
noises, from x_T = eps + flat(delta) (the trigger's per-channel mean as a frame):

    C(delta) = (mean_b ||x0_b - m||^2 + c) / (mean_b ||m - x0f_b||^2 + c),   m = mean_b x0_b,   c = 0.01

in [-1, 1] units: the spread of the samples over how far their mean lies from what the flat part draws. A trigger
that fires makes the numerator small and the denominator large; plain noise and any flat frame give exactly 1
(delta = flat(delta)), so the black frames that flat shifts draw on these models (zero spread) do not count as
agreement. It is differentiated through the whole chain (torch autograd, samples clamped to [-1, 1]) and minimised
with Adam (lr 0.05, fresh noise per step, delta kept in [-1, 1]) from two starts:

  paper       -U(0, 1), PureDiffusion's start
  zero-mean   0.1 N(0, 1), a start whose samples are not black frames

First it records C at a few fixed shifts per chain length R (10, 25, 50, 100) on one noise batch: whether the
truth is singled out at all, and from which R. Then one search per start on the backdoored model at R = 50 and
the zero-mean search on its clean base, scored by C, the pattern cosine to the truth and the exact ASR of 32
samples on the family's sampler respaced to 100 steps.

    OMP_NUM_THREADS=1 python research/consistency_probe.py

Outputs research/results/consistency-probe.md and .json (about 35 min on one core).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from quality.base import git_info, log, write_json  # noqa: E402
from quality.tables import md_table  # noqa: E402

ZOO = HERE / "zoo" / "v2" / "models"
BACKDOORED, CLEAN = "v2-fam-vd16-sde-psi0-stop18-cat-fn", "v2-c16-s0"
OUT = HERE / "results" / "consistency-probe"
R_SEARCH, BATCH, ITERS, LR, FLOOR = 50, 16, 60, 0.05, 0.01


def run_chain(model, sampler, noise, zs, delta):
    """x0 of the respaced ancestral chain from x_T = noise + delta, differentiable in delta: the DDPM step through
    the torch reference ``ddpm_update_ref`` (plain torch, so autograd runs through it), the last sample clamped to
    [-1, 1]."""
    from pdfast.kernels import ddpm_update_ref

    x = noise + delta
    for i, t in enumerate(sampler.timesteps):
        c1, c2, sigma = sampler.rows(i + 1)[i, :3].tolist()
        x = ddpm_update_ref(x, model.eps(x, t), c1, c2, sigma, noise=zs[i] if sampler.needs_noise(i) else None)
    return x.clamp(-1, 1)


def consistency(model, sampler, noise, zs, delta):
    """C(delta): the samples' spread over their mean's distance from the flat part's samples (module docstring)."""
    x = run_chain(model, sampler, noise, zs, delta)
    xf = run_chain(model, sampler, noise, zs, delta.mean(dim=(-2, -1), keepdim=True).expand_as(delta))
    m = x.mean(0, keepdim=True)
    return ((x - m).pow(2).mean() + FLOOR) / ((m - xf).pow(2).mean() + FLOOR)


def draws(model, sampler, gen, n=BATCH):
    import torch

    return (torch.randn((n, *model.shape), generator=gen),
            [torch.randn((n, *model.shape), generator=gen) for _ in sampler.timesteps])


def search(model, sampler, start: str, seed: int = 0):
    """Adam on C from ``start`` (paper or zero-mean); returns (delta, seconds)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    init = -torch.rand((1, *model.shape), generator=gen) if start == "paper" else \
        0.1 * torch.randn((1, *model.shape), generator=gen)
    delta = init.requires_grad_(True)
    opt = torch.optim.Adam([delta], lr=LR)
    t0 = time.perf_counter()
    for _ in range(ITERS):
        loss = consistency(model, sampler, *draws(model, sampler, gen), delta)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            delta.clamp_(-1, 1)
    return delta.detach().reshape(model.shape), time.perf_counter() - t0


def fixed_shifts(model, g):
    """C at zero, a -0.5 frame, the truth and its flat part, for R = 10, 25, 50, 100 (one batch, seed 123)."""
    import torch

    from pdfast import metrics
    from pdfast.chain import DDPMSampler

    shifts = {"zero": torch.zeros(model.shape), "-0.5 frame": torch.full(model.shape, -0.5),
              "truth": g.reshape(model.shape), "flat part": metrics.flat_part(g).reshape(model.shape)}
    rows = {}
    with torch.no_grad():
        for r in (10, 25, 50, 100):
            sampler = DDPMSampler(model.schedule, clip_sample=False, respace=r)
            noise, zs = draws(model, sampler, torch.Generator().manual_seed(123))
            rows[r] = {k: float(consistency(model, sampler, noise, zs, v)) for k, v in shifts.items()}
            log(f"R = {r}: {rows[r]}")
    return rows


def main() -> int:
    import torch

    from pdfast import metrics
    from pdfast.chain import DDPMSampler
    from pdfast.engine import make_engine
    from pdfast.families import family_of
    from pdfast.loading import load_ground_truth, load_model

    torch.set_num_threads(1)
    model = load_model(ZOO / BACKDOORED).frozen()
    g, y = load_ground_truth(model)
    record = {"git": git_info(), "model": BACKDOORED, "clean": CLEAN, "fixed": fixed_shifts(model, g), "runs": []}
    sampler = DDPMSampler(model.schedule, clip_sample=False, respace=R_SEARCH)
    fire = family_of(model).sampler(model.schedule, False, respace=100)
    noise, zs = draws(model, sampler, torch.Generator().manual_seed(123))
    for name, start in ((BACKDOORED, "paper"), (BACKDOORED, "zero-mean"), (CLEAN, "zero-mean")):
        m = model if name == BACKDOORED else load_model(ZOO / name).frozen()
        d, secs = search(m, sampler, start)
        with torch.no_grad():
            value = float(consistency(m, sampler, noise, zs, d))
        imgs = make_engine("fast", m).sample_together(32, [d], seed=5, sampler=fire)
        run = {"model": name, "start": start, "objective": value, "cosine": metrics.pattern_cosine(d, g),
               "rms": float(d.pow(2).mean().sqrt()), "exact_asr_to_target": metrics.asr(imgs[0], y, 0.02),
               "uniformity": metrics.uniformity(imgs[0]), "seconds": round(secs, 1)}
        record["runs"].append(run)
        log(str(run))
    write(record)
    return 0


def write(record: dict) -> None:
    """research/results/consistency-probe.json and .md."""
    fixed = [[r, *(f"{v:.3f}" for v in vals.values())] for r, vals in record["fixed"].items()]
    runs = [[r["model"], r["start"], f"{r['objective']:.3f}", f"{r['cosine']:.2f}", f"{r['rms']:.2f}",
             f"{r['exact_asr_to_target']:.2f}", f"{r['uniformity']:.3f}", r["seconds"]] for r in record["runs"]]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    write_json(OUT.with_suffix(".json"), record)
    OUT.with_suffix(".md").write_text(
        "# A denoising-consistency objective on the VillanDiffusion-SDE model (issue 20)\n\n"
        f"Written by `python research/consistency_probe.py` (CPU, one thread). C(delta) = (spread of the samples + "
        f"0.01) / (distance of their mean from the flat part's samples + 0.01) on the ancestral chain respaced to R "
        f"steps, {BATCH} noises; 1 = no different from a flat frame, lower = the samples agree on an image the flat "
        "part does not draw.\n\n## C at fixed shifts on " + record["model"] + "\n\n"
        + md_table(fixed, ["R", *next(iter(record["fixed"].values())).keys()]) + "\n\n"
        f"## Adam on C (R = {R_SEARCH}, {ITERS} steps, lr {LR}); exact ASR to the backdoored model's target over 32 "
        "samples on the family's sampler respaced to 100 steps; uniformity of those samples\n\n"
        + md_table(runs, ["model", "start", "C", "cosine to truth", "RMS", "exact ASR", "uniformity", "seconds"])
        + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
