"""The PureDiffusion/Elijah objective evaluated at hand-picked triggers on one model: is the true trigger a
better minimum than the trivial ones? (A diagnostic for when inversion does not find a firing trigger.)

L(delta) at chain step k = || mean_b eps_theta(x_{t_k}) - lambda delta ||_1 (batch 40, fixed noise, lambda 0.52),
for delta in {truth, an inverted trigger, a -1 frame, 0, truth/2, the truth's patch on a 0 background}.

  python bench/loss_landscape.py --inverted bench/results/logs/invert50/trigger.safetensors
"""
from __future__ import annotations

import argparse
import sys

import torch

from common import header, md_table, write


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--inverted", default=None, help="trigger.safetensors of an inversion")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--lam", type=float, default=0.52)
    ap.add_argument("--batch", type=int, default=40)
    a = ap.parse_args(argv)

    import pdfast
    from pdfast.loading import load_ground_truth
    from pdfast.engine import make_engine

    m = pdfast.load_model(a.model or pdfast.demo_path())
    g, _ = load_ground_truth(m)
    cands = {"truth": g, "minus1 frame": -torch.ones_like(g), "zero": torch.zeros_like(g), "truth/2": 0.5 * g,
             "truth patch, 0 background": torch.where(g == -1, torch.zeros_like(g), g)}
    if a.inverted:
        from safetensors.torch import load_file

        cands["inverted"] = load_file(a.inverted)["trigger"].reshape(g.shape)
    from pdfast.chain import DDPMSampler
    from pdfast.objectives import ShiftObjective

    eng = make_engine("reference", m)
    ts = m.schedule.timesteps(a.steps)
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(a.batch, *m.shape, generator=gen)
    zs = [torch.randn(a.batch, *m.shape, generator=gen) for _ in range(a.steps - 1)]
    floor = float(noise.mean(0).abs().mean())
    rows = []
    for name, d in cands.items():
        row = {"delta": name, "||delta - truth||": float((d - g).norm())}
        for k in (0, a.steps // 2, a.steps - 1):
            loss, grad = eng.loss_and_grad(d[None], noise, zs, DDPMSampler(m.schedule, a.steps),
                                           ShiftObjective([a.lam] * a.steps, "l1"), [k])
            row[f"loss k={k}"] = loss
        with torch.no_grad():  # control variate: E[eps] = 0, so subtracting the known noise keeps the mean
            e = m.eps(noise + d[None], torch.tensor(ts[0]))
            row["loss k=0, noise subtracted"] = float(((e - noise).mean(0) - a.lam * d).abs().mean())
        rows.append(row)
        print(row, file=sys.stderr)
    from pdfast.scales import estimate_scales

    true_lam = estimate_scales(m, g, a.steps, batch=64)
    table = md_table(rows, list(rows[0])) + (f"\n\nNoise floor: mean_b of the noise alone gives an L1 of {floor:.4f} "
                                             f"at batch {a.batch}.\n\nLeast-squares lambda along the chain from eps + "
                                             f"truth (eq. 15 with the TRUE trigger; compare the surrogate table in "
                                             f"demo-methods.md): {[round(float(v), 3) for v in true_lam]}\n")
    write("demo-loss-landscape", {**header(), "command": "python bench/loss_landscape.py " + " ".join(argv or sys.argv[1:]),
                                  "rows": rows, "noise_floor": floor}, table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
