"""Can a collapse objective find a VillanDiffusion-ODE trigger, and does its verdict then earn its call (issue 20)?

PureDiffusion's shift objective does not recover the ODE backdoor of zoo v2 (docs/method.md 5.7, family_response.py).
An ODE backdoor is deterministic: its sampler sends every eps + g to the target. So a trigger can be searched for by
what the verdict itself reads (docs/method.md 7): samples that land on one image which the trigger's flat part does
not reach. This study runs that search, pdfast's own experiment (no paper proposes it):

  out(x_T)  = the S-step deterministic DDIM chain from x_T, clipped to [-1, 1]   (pdfast.chain.DDIMSampler)
  L(delta)  = log mean_px var_b out(eps_b + delta) - log mean_{b,px} (out(eps_b + delta) - out(eps_b + flat(delta)))^2

Adam (lr 0.05) from delta = -U(0, 1), fresh noises each step, delta kept in [-1, 1]. The inverted trigger is then
judged as `pdfast detect` judges it: metrics.firing on 64 samples of the family's own sampler (50-step DDIM), against
the same noises with no shift and with the trigger's flat part. The same search runs on the clean base the backdoor
was fine-tuned from, with the same family: if the clean model fires as well, a collapse objective cannot be the
detector, because on a deterministic chain a bounded trigger collapses a clean model too.

    python research/ode_collapse.py [--seeds 0 1] [--iters 150]

Outputs research/results/ode-collapse.md and .json (about 5 min per model and seed on one core).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from quality.base import git_info, log, write_json  # noqa: E402
from quality.tables import md_table  # noqa: E402
from stats import fmt_rate, rate  # noqa: E402

ZOO2 = HERE / "zoo" / "v2" / "models"
OUT = HERE / "results" / "ode-collapse"
BACKDOORED, CLEAN = "v2-fam-vd16-ode-stop18-cat", "v2-c16-s0"


def contrast_loss(out_trigger, out_flat):
    """L = log mean var_b(out_trigger) - log mean (out_trigger - out_flat)^2: low when the trigger's samples agree with
    each other and differ from its flat part's on the same noises."""
    var = out_trigger.var(0).mean()
    return var.log() - (out_trigger - out_flat).pow(2).mean().log()


def ddim_out(model, sampler, x):
    """The deterministic DDIM chain from x (pdfast.chain.run, with gradient), clipped to [-1, 1]."""
    from pdfast.chain import run

    return run(model.eps, x, sampler, None).clamp(-1, 1)  # DDIM adds no noise, so no noise source is needed


def collapse_invert(model, seed: int, iters: int, batch: int = 16, steps: int = 10, lr: float = 0.05):
    """Minimise contrast_loss over delta through an S-step DDIM chain; returns (delta, loss trace every 10 steps)."""
    import torch

    from pdfast.chain import DDIMSampler

    sampler = DDIMSampler(model.schedule, steps)
    gen = torch.Generator().manual_seed(seed)
    delta = (-torch.rand((1, *model.shape), generator=gen)).requires_grad_(True)
    opt = torch.optim.Adam([delta], lr=lr)
    trace = []
    for it in range(iters):
        noise = torch.randn((batch, *model.shape), generator=gen)
        flat = delta.mean(dim=(-2, -1), keepdim=True).expand_as(delta)
        out = ddim_out(model, sampler, torch.cat([noise + delta, noise + flat]))
        loss = contrast_loss(out[:batch], out[batch:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            delta.clamp_(-1, 1)
        if it % 10 == 0 or it == iters - 1:
            trace.append([it, round(float(loss.detach()), 4)])
    return delta.detach()[0], trace


def judge(model, family, tau, g, y, n: int = 64) -> dict:
    """The verdict's firing test of tau on the family's sampler (64 samples, seed 123), the exact ASR to the target
    where one is known, and the same for the truth."""
    from pdfast import metrics
    from pdfast.engine import make_engine

    eng = make_engine("reference", model)
    sampler = family.sampler(model.schedule, model.schedule.clip_sample)
    starts = [tau, None, metrics.flat_part(tau)] + ([g, metrics.flat_part(g)] if g is not None else [])
    imgs = eng.sample_together(n, starts, seed=123, sampler=sampler)
    f = metrics.firing(imgs[0], imgs[1], imgs[2])
    out = {"trigger_miss": round(f["trigger_miss"], 4), "medoid_hits": f["medoid_hits"],
           "medoid_contrast": round(f["medoid_contrast"], 4)}
    if g is not None:
        ft = metrics.firing(imgs[3], imgs[1], imgs[4])
        out["truth_trigger_miss"] = round(ft["trigger_miss"], 4)
        out["pattern_cos"] = round(metrics.fidelity(tau, g)["pattern_cos"], 4)
    if y is not None:
        hits = {k: round(metrics.asr(imgs[i], y, 0.02) * n) for k, i in (("tau", 0), ("plain", 1), ("truth", 3))}
        out["exact"] = {k: rate(v, n) for k, v in hits.items()}
    return out


def report(rows: list[dict], threshold: float, argv: list[str]) -> str:
    """The markdown table, one row per model and seed."""
    head = ["model", "seed", "final loss", "trigger_miss (verdict: backdoored below %.4f)" % threshold,
            "hits: trigger / plain / flat (of the trigger's medoid)", "medoid contrast", "pattern cos to truth",
            "exact ASR: inverted / truth / plain", "truth's trigger_miss", "seconds"]
    body = []
    for r in rows:
        j, h = r["judged"], r["judged"]["medoid_hits"]
        ex = j.get("exact")
        body.append([r["model"], r["seed"], r["trace"][-1][1], j["trigger_miss"],
                     f"{h['trigger']:.2f} / {h['plain']:.2f} / {h['flat']:.2f}", j["medoid_contrast"],
                     j.get("pattern_cos", "-"),
                     " / ".join(fmt_rate(ex[k]) for k in ("tau", "truth", "plain")) if ex else "-",
                     j.get("truth_trigger_miss", "-"), r["seconds"]])
    return (f"# A collapse objective on the VillanDiffusion-ODE backdoor and its clean base (issue 20)\n\nWritten by "
            f"`python research/ode_collapse.py {' '.join(argv)}`: contrast_loss through a 10-step DDIM chain, batch "
            "16, Adam lr 0.05; each trigger judged by metrics.firing on 64 samples of the family's 50-step DDIM sampler "
            "(seed 123). The clean base is searched with the backdoored model's family (VillanDiffusion ODE). Exact "
            "ASR: MSE < 0.02 to the target in [0, 1], 95% Wilson intervals.\n\n" + md_table(body, head) + "\n")


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--iters", type=int, default=150)
    args = ap.parse_args(argv)
    import torch

    from pdfast.detection import calibration
    from pdfast.families import family_of
    from pdfast.loading import load_ground_truth, load_model

    torch.set_num_threads(1)
    bd = load_model(ZOO2 / BACKDOORED).frozen()
    family = family_of(bd)
    threshold = float(calibration(sample_size=bd.sample_size)["threshold"])
    rows = []
    for name in (BACKDOORED, CLEAN):
        model = bd if name == BACKDOORED else load_model(ZOO2 / name).frozen()
        g, y = load_ground_truth(bd) if name == BACKDOORED else (None, None)
        for seed in args.seeds:
            log(f"{name} seed {seed}")
            t0 = time.time()
            tau, trace = collapse_invert(model, seed, args.iters)
            rows.append({"model": name, "seed": seed, "trace": trace, "seconds": round(time.time() - t0),
                         "judged": judge(model, family, tau, g, y), "trigger": [round(v, 4) for v in tau.flatten().tolist()]})
    OUT.parent.mkdir(parents=True, exist_ok=True)
    write_json(OUT.with_suffix(".json"), {"git": git_info(), "family": family.describe(), "threshold": threshold,
                                          "iters": args.iters, "rows": rows})
    OUT.with_suffix(".md").write_text(report(rows, threshold, argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
