"""Why PureDiffusion's shift objective does not recover zoo v2's VillanDiffusion-ODE and TrojDiff backdoors (issue 20):
the measured shift response per chain step, the truth beside other patterns and beside the clean base.

PureDiffusion's objective (docs/method.md section 5) asks for a trigger delta whose shift of the network's mean output
along the family's inversion chain is lambda_i delta, lambda_i the surrogate backdoor's scale. It can only single
out the true trigger where the suspect network answers the true trigger with lambda_i and other shifts with
something else. This study measures that answer directly: pdfast.scales.estimate_scales (eq. 15, the least-squares
scale lambda_i = <mean_b eps_theta(x_i), delta> / <delta, delta> at each step i of the family's inversion chain from
x_T = s eps + delta) for

  truth          the model's own trigger shift (TrojDiff: mu = (1 - gamma) g)
  BOX_14, HEART, GLASSES, STOP_SIGN_14   other trigger images, as the family's shift
  flat           a flat frame at the truth's per-channel mean (the trigger's flat part)

on each backdoored dev family model and on the clean base v2-c16-s0 it was fine-tuned from, with the same noises.
Where the truth's row equals the other patterns' rows the objective has no minimum at the truth, whatever the
optimiser; where it differs but the inversion still misses, the failure is the optimiser's. It also records, on one
fixed antithetic noise batch (the inversion's own noise), the relative objective (pdfast's default form) at the
truth, at the other patterns and at the default inversion's own result when defaults_v2.py or families.py
(`pdfast detect`, PureDiffusion and Elijah) has cached one, each beside the exact ASR of that shift: whether the
objective ranks the shifts the way firing does. Last, the relative residual of the shift relation deep into the
chain (300 DDPM steps; the ODE chain's 50): whether only the truth keeps lambda past the K = 10 steps the inversion
looks at.

    python research/family_response.py [--k 50] [--deep 300]

Outputs research/results/family-response.md and .json (dev models only; a few minutes per model on one core).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from quality.base import git_info, log, write_json  # noqa: E402
from quality.tables import md_table  # noqa: E402

ZOO2 = HERE / "zoo" / "v2" / "models"
OUT = HERE / "results" / "family-response"
MODELS = ("v2-fam-bd16-stop18-cat", "v2-fam-vd16-ode-stop18-cat", "v2-fam-td16-blend-stop18-hat",
          "v2-fam-vd16-sde-psi0-stop18-cat", "v2-fam-vd16-sde-psi0-stop18-cat-absorb",
          "v2-fam-vd16-sde-psi0-stop18-cat-fn")
CLEAN = "v2-c16-s0"
OTHERS = ("BOX_14", "HEART", "GLASSES", "STOP_SIGN_14")


def shifts(model, family) -> dict:
    """name -> x_T shift: the truth, other trigger images as the family's shift, the truth's flat part."""
    from pdfast import metrics
    from pdfast.loading import load_ground_truth
    from pdfast.patterns import load_pattern

    g, _ = load_ground_truth(model)
    out = {"truth": g}
    out.update({n: family.shift(load_pattern(n, model.sample_size, model.channels, kind="trigger")) for n in OTHERS})
    out["flat"] = metrics.flat_part(g)
    return out


def responses(model, family, named: dict, k: int) -> dict:
    """name -> lambda_i per step of the family's inversion chain (estimate_scales, seed 0, batch 64)."""
    from pdfast.scales import estimate_scales

    return {n: [round(float(v), 4) for v in estimate_scales(model, d, k, family=family)] for n, d in named.items()}


def objective_values(model, family, named: dict, k: int) -> dict:
    """name -> the relative L2 objective over all k steps with the model's surrogate lambdas, on one fixed antithetic
    noise batch of 32 (seed 0): lower is what the inversion prefers."""
    import torch
    from pdfast.config import InversionConfig
    from pdfast.engine import make_engine
    from pdfast.inversion import scale_table
    from pdfast.objectives import ShiftObjective

    cfg = InversionConfig(steps=k)
    lam = [float(v) for v in scale_table(model, cfg, "cpu", False).values]
    sampler = family.inversion_sampler(model.schedule, cfg.clip_for(model.schedule.clip_sample), k)
    gen = torch.Generator().manual_seed(0)
    noise, zs = _antithetic(model, family, sampler, k, gen)
    engine, obj = make_engine("reference", model), ShiftObjective(lam, "l2", True)
    out = {}
    for n, d in named.items():
        loss, _ = engine.loss_and_grad(d.reshape(1, *model.shape), noise, zs, sampler, obj, list(range(k)))
        out[n] = round(loss, 5)
    return {"lambdas": [round(v, 4) for v in lam], "values": out}


def _antithetic(model, family, sampler, k: int, gen, half: int = 16):
    """x_T's noise (times the family's noise scale) and the k chain-step noises z_i, each as 2 * half antithetic
    pairs (e, -e), as the inversion draws them (noise="antithetic"): their batch means are exactly 0, so the
    objective carries no 1/sqrt(B) noise floor, which would otherwise grow along the chain and, divided by the
    trigger's size, penalise small triggers most."""
    import torch

    def pair():
        h = torch.randn((half, *model.shape), generator=gen)
        return torch.cat([h, -h])

    noise = pair() * family.noise_scale()
    return noise, [pair() if sampler.needs_noise(i) else None for i in range(k)]


def residuals(model, family, named: dict, k: int, lam: float, picks: list[int]) -> dict:
    """name -> the relative residual ||mean_b eps_theta(x_i) - lam delta||^2 / ||delta||^2 at the chain steps
    ``picks`` of the family's k-step inversion chain from x_T = s eps + delta (one antithetic batch of 32, seed 1):
    whether a shift keeps the scale ``lam`` deep into the chain, past the K = 10 steps the inversion looks at."""
    import torch

    sampler = family.inversion_sampler(model.schedule, False, k)
    noise, zs = _antithetic(model, family, sampler, k, torch.Generator().manual_seed(1))
    out = {}
    with torch.no_grad():
        for n, d in named.items():
            d = d.reshape(1, *model.shape).float()
            x, row = noise + d, {}
            for i in range(k):
                eps = model.eps(x, sampler.timesteps[i])
                if i in picks:
                    row[i] = round(float((eps.mean(0, keepdim=True) - lam * d).pow(2).sum() / d.pow(2).sum()), 5)
                x = sampler.step(i, x, eps, zs[i])
            out[n] = row
    return out


def firing_of(model, family, named: dict, n: int = 32, steps: int = 100) -> dict:
    """name -> exact ASR (MSE < 0.02 to the model's target) of n samples from s eps + shift on the family's own
    sampler respaced to ``steps`` (the setting of the inversion's firing selection), the same noises (seed 2) for
    every shift and for plain noise (name "plain")."""
    from pdfast import metrics
    from pdfast.engine import make_engine
    from pdfast.loading import load_ground_truth

    _, y = load_ground_truth(model)
    names = list(named)
    imgs = make_engine("reference", model).sample_together(
        n, [named[k].reshape(model.shape) for k in names] + [None], seed=2,
        sampler=family.sampler(model.schedule, False, respace=steps))
    return {k: round(metrics.asr(imgs[i], y, 0.02), 4) for i, k in enumerate([*names, "plain"])}


def cached_inversions(name: str, shape) -> dict:
    """The default inversion's trigger per seed from defaults_v2.py's cache (K = 10), and the triggers of `pdfast
    detect` (PureDiffusion and Elijah, defaults) from families.py's cache, when present."""
    import json

    import torch
    from safetensors.torch import load_file

    out = {}
    for f in sorted((HERE / "results" / "defaults-v2").glob(f"{name}--pdfast--s*--k10.safetensors")):
        out["pdfast " + f.stem.split("--")[2]] = load_file(f)["tau"]
    for f in sorted((HERE / "results" / "families").glob("*.json")):
        rec = json.loads(f.read_text())
        if Path(rec["folder"]).name == name:
            for method in ("puredif", "elijah"):
                out[f"detect {method}"] = torch.tensor(rec[method + "_trigger"]).reshape(shape)
    return out


def _picks(k: int) -> list[int]:
    """Step 0, every tenth of the chain, and its last step."""
    return sorted({0, *range(k // 10 or 1, k, k // 10 or 1), k - 1})


def report(rows: dict, k: int, argv: list[str]) -> str:
    """The markdown: per model, lambda_i at every tenth step for each shift, then the objective values beside each
    shift's firing, then the residual deep into the chain."""
    picks = _picks(k)
    parts = [f"# Shift response of the family models (issue 20)\n\nWritten by `python research/family_response.py "
             f"{' '.join(argv)}`. lambda_i = <mean_b eps_theta(x_i), delta>/<delta, delta> along each family's "
             f"inversion chain (K = {k}; VillanDiffusion-ODE: the 50-step DDIM chain; TrojDiff: the DDPM chain from "
             f"gamma eps + delta), seed 0, 64 noises, steps {picks}.\n"]
    for name, r in rows.items():
        head = ["shift", *[f"i={i}" for i in picks]]
        body = [[n, *[f"{v[i]:.2f}" for i in picks]] for n, v in r["response"].items()]
        body += [[f"{n} (clean base)", *[f"{v[i]:.2f}" for i in picks]] for n, v in r["clean_response"].items()]
        parts.append(f"## {name} ({r['family']})\n\n" + md_table(body, head))
        o, f = r["objective_k10"], r["fires"]
        parts.append(f"Relative L2 objective at K = 10 (surrogate lambdas {o['lambdas']}), one fixed antithetic batch "
                     "of 32 (as the inversion draws its noise); lower is preferred. Beside it, the exact ASR of 32 "
                     "samples from the shift on the family's sampler respaced to 100 steps (plain noise: "
                     f"{f['plain']:.2f}):\n\n"
                     + md_table([[n, v, f"{f[n]:.2f}"] for n, v in o["values"].items()], ["shift", "loss", "exact ASR"]))
        d = r["residual"]
        steps = list(next(iter(d["steps"].values())))
        parts.append(f"Relative residual ||mean eps_theta(x_i) - lambda delta||^2 / ||delta||^2 along the {d['k']}-step "
                     f"inversion chain (lambda = {d['lambda']}, the mean surrogate lambda; one antithetic batch of 32):"
                     "\n\n" + md_table([[n, *[f"{v[i]:.4f}" for i in steps]] for n, v in d["steps"].items()],
                                        ["shift", *[f"i={i}" for i in steps]]))
    return "\n\n".join(parts) + "\n"


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--k", type=int, default=50, help="chain steps of the response table (default 50)")
    ap.add_argument("--deep", type=int, default=300, help="chain steps of the residual table (default 300; the "
                    "VillanDiffusion-ODE chain has its 50 DDIM steps)")
    args = ap.parse_args(argv)
    import torch
    from pdfast.families import family_of
    from pdfast.loading import load_model

    torch.set_num_threads(1)
    clean = load_model(ZOO2 / CLEAN)
    rows = {}
    for name in MODELS:
        model = load_model(ZOO2 / name)
        family = family_of(model)
        named = shifts(model, family)
        log(f"{name}: responses")
        every = {**named, **cached_inversions(name, named["truth"].shape)}
        objective = objective_values(model, family, every, 10)
        deep = family.ode_steps if family.solver == "ode" else args.deep
        lam = sum(objective["lambdas"]) / len(objective["lambdas"])
        log(f"{name}: residuals over {deep} steps, firing")
        rows[name] = {"family": family.describe(), "response": responses(model, family, named, args.k),
                      "clean_response": responses(clean, family, {k: named[k] for k in ("truth", "HEART")}, args.k),
                      "objective_k10": objective, "fires": firing_of(model, family, every),
                      "residual": {"k": deep, "lambda": round(lam, 4),
                                   "steps": residuals(model, family, every, deep, lam, _picks(deep))}}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    write_json(OUT.with_suffix(".json"), {"git": git_info(), "k": args.k, "models": rows})
    OUT.with_suffix(".md").write_text(report(rows, args.k, argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
