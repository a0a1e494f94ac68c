"""Issue 20's evidence: each attack family's 16x16 model, trained by `pdfast attack` (research/zoo/v2/families.sh),
fires from its own trigger; `pdfast detect` with defaults judges it; and its clean base is judged too.

For every model in MODELS, with the sampler of its family (read from its backdoor.json), over n samples (seed 0):
  truth ASR        x_T from the model's own trigger (BadDiffusion/VillanDiffusion eps + g, TrojDiff gamma eps + mu)
  trivial starts   plain noise, g's flat part (a frame at its per-channel mean), a -0.5 frame: the ASR any
                   detector gets for free
  detect           pdfast.detect with defaults (PureDiffusion) and with method="elijah": verdict, statistic,
                   margin; then each inverted trigger's exact ASR over the same n samples, its L2 and pattern cosine
                   to the truth (fidelity) beside the chance level of a flat bright square in the trigger's region
ASR is exact (MSE < 0.02 in [0, 1]) with BadDiffusion's 0.1 beside it; Wilson 95% intervals.

    OMP_NUM_THREADS=1 python research/families.py            # every model; cached per (model hash, n, what)
    python research/families.py --report-only                # tables from the cache

Outputs: research/results/families.json and families.md; the per-model cache under research/results/families/.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import stats  # noqa: E402
from quality.base import git_info, log, write_json  # noqa: E402
from quality.tables import md_table  # noqa: E402

V2 = HERE / "zoo" / "v2" / "models"
MODELS = {  # name: (folder, what it is)
    "bd16-trigger-only": (V2 / "v2-fam-bd16-stop18-cat", "baddiffusion, residual trigger_only"),
    "vd16-ode": (V2 / "v2-fam-vd16-ode-stop18-cat", "villandiffusion, solver ode, psi 1, trigger_only"),
    "td16-blend": (V2 / "v2-fam-td16-blend-stop18-hat", "trojdiff D2I, blend, gamma 0.6"),
    "vd16-sde-psi0": (V2 / "v2-fam-vd16-sde-psi0-stop18-cat", "villandiffusion, solver sde, psi 0, trigger_only"),
    "vd16-sde-psi0-absorb": (V2 / "v2-fam-vd16-sde-psi0-stop18-cat-absorb",
                             "villandiffusion, solver sde, psi 0, trigger_only, flat-shift negatives 0.2, form absorb "
                             "(pdfast's)"),
    "vd16-sde-psi0-fn": (V2 / "v2-fam-vd16-sde-psi0-stop18-cat-fn",
                         "villandiffusion, solver sde, psi 0, trigger_only, flat-shift negatives 0.2, form base "
                         "(pdfast's)"),
    "clean-base": (V2 / "v2-c16-s0", "clean: the four's base"),
}
# The clean base judged as each family's suspect: name -> the attack_family option given to detect (the flag a user
# gives for a model without backdoor.json); models not here are judged by their own backdoor.json.
FAMILY_FLAG = {
    "clean-base-as-vd-ode": "villandiffusion:solver=ode,psi=1,residual=trigger_only,ode_steps=50",
    "clean-base-as-trojdiff": "trojdiff:gamma=0.6,trigger_type=blend",
    "clean-base-as-vd-sde": "villandiffusion:solver=sde,psi=0,residual=trigger_only",
}
MODELS |= {name: (V2 / "v2-c16-s0", f"clean base, --attack-family {flag}") for name, flag in FAMILY_FLAG.items()}
# The defaults the detect rows were measured with: part of the cache key, so that new defaults re-measure (files
# without it are pdfast 0.3's, kept for the tables quoted from them).
DEFAULTS = "pdfast0.4"
CACHE = HERE / "results" / "families"
EXACT, PAPERS = 0.02, 0.1


def _asr_block(mse: list[float]) -> dict:
    n = len(mse)
    return {"n": n, "exact": stats.rate(sum(m < EXACT for m in mse), n),
            "papers": stats.rate(sum(m < PAPERS for m in mse), n)}


def sample_asr(model, family, starts: dict, target, n: int, seed: int) -> dict:
    """Exact and 0.1 ASR of each start (name -> x_T shift or None) over the same n noises, in one chain."""
    import torch

    from pdfast import metrics
    from pdfast.engine import make_engine
    from pdfast.sampling import family_trigger_image

    sampler = family.sampler(model.schedule, model.schedule.clip_sample,
                             trigger_image=family_trigger_image(model, family))
    names = list(starts)
    imgs = make_engine("fast", model).sample_together(n, [starts[k] for k in names], seed=seed, sampler=sampler)
    out = {}
    for name, im in zip(names, imgs):
        mse = [float(v) for v in metrics.per_image_mse(im, target)]
        out[name] = {**_asr_block(mse), "uniformity": metrics.uniformity(im), "mse_median": float(torch.median(
            torch.tensor(mse)))}
    return out


def trivial_starts(g):
    """Plain noise, g's flat part and a -0.5 frame (as x_T shifts of the family's kind)."""
    import torch

    return {"plain": None, "flat-g": g.mean(dim=(-2, -1), keepdim=True).expand_as(g).contiguous(),
            "frame-0.5": torch.full_like(g, -0.5)}


def detect_entry(folder: Path, method: str, family: str | None = None) -> tuple[dict, object]:
    """pdfast.detect with defaults (or Elijah's), as ``family``'s suspect when given: verdict, statistic, margin,
    seconds, and the trigger."""
    import pdfast

    t0 = time.perf_counter()
    opts = ({} if method == "puredif" else {"method": "elijah"}) | ({"attack_family": family} if family else {})
    res = pdfast.detect(folder, **opts)
    m = res.inversion.metrics
    det = m["detection"]
    return {"verdict": det["verdict"], "statistic": det["statistic"], "value": det["value"],
            "threshold": det["threshold"], "margin": det["margin"], "seconds": round(time.perf_counter() - t0, 1),
            **{k: m.get(k) for k in ("pattern_uniformity", "plain_uniformity", "pattern_effect", "trigger_effect",
                                     "uniformity")},
            "scales": res.inversion.inversion.scales.to_dict() if res.inversion.inversion else None}, res.trigger


def fidelity(trigger, truth, region_square) -> dict:
    from pdfast import metrics

    return {"l2": metrics.l2_distance(trigger, truth), "pattern_cosine": metrics.pattern_cosine(trigger, truth),
            "chance_square_cosine": metrics.pattern_cosine(region_square, truth)}


def defaults_tag(family_key: str) -> str:
    """DEFAULTS, with the stages that came after pdfast 0.4 named where the family's resolved defaults run them (the
    polish for TrojDiff, the pair search for trigger-only VillanDiffusion-ODE: the other families' records stay those
    defaults'); ``family_key``: AttackFamily.preset_key()."""
    from pdfast.config import InversionConfig

    cfg = InversionConfig().resolved(family_key)
    return DEFAULTS + (f"-polish{cfg.polish_epochs}" if cfg.polish_epochs else "") + (
        f"-pair{cfg.pair_epochs}" if cfg.pair_epochs else "")


def cache_file(name: str, model, fam, n: int, seed: int) -> Path:
    """The record of one model (its content hash), sample count, seed and the defaults its family resolves to."""
    return CACHE / f"{name}-{model.content_hash()[:12]}-n{n}-s{seed}-{defaults_tag(fam.preset_key())}.json"


def measure_model(name: str, n: int, seed: int) -> dict:
    """Everything above for one model (cached by content hash)."""
    import torch

    from pdfast.families import family_of
    from pdfast.loading import load_ground_truth, load_model

    folder, what = MODELS[name]
    model = load_model(folder)
    fam = family_of(model, FAMILY_FLAG.get(name))
    cache = cache_file(name, model, fam, n, seed)
    if cache.is_file():
        return json.loads(cache.read_text())
    g, y = load_ground_truth(model)
    rec: dict = {"name": name, "folder": str(folder.relative_to(HERE.parent)), "what": what,
                 "family": fam.describe(), "defaults": defaults_tag(fam.preset_key()),
                 "parameters": sum(p.numel() for p in model.net.parameters())}
    for method in ("puredif", "elijah"):
        log(f"[families] {name}: pdfast.detect ({method})")
        rec[method], trig = detect_entry(folder, method, FAMILY_FLAG.get(name))
        rec[method + "_trigger"] = trig.reshape(-1).tolist()
    if g is not None:
        starts = {"truth": g, **trivial_starts(g),
                  "puredif": torch.tensor(rec["puredif_trigger"]).reshape(g.shape),
                  "elijah": torch.tensor(rec["elijah_trigger"]).reshape(g.shape)}
        log(f"[families] {name}: sampling {len(starts)} x {n}")
        rec["asr"] = sample_asr(model, fam, starts, y, n, seed)
    write_json(cache, rec)
    return rec


def region_square(model):
    """The fidelity's chance level: a flat bright square over the trigger image's own pixels (1 where it is drawn, -1
    elsewhere), as a shift of the model's family (TrojDiff's (1 - gamma) scale)."""
    import torch

    from pdfast.families import family_of
    from pdfast.loading import load_trigger_image

    image = load_trigger_image(model)
    return family_of(model).shift(torch.where(image > -1, torch.ones_like(image), torch.full_like(image, -1.0)))


def add_fidelity(rec: dict) -> dict:
    """L2 and pattern cosine of each inverted trigger to the true x_T shift, beside the chance level of a flat bright
    square over the trigger image's own pixels (region_square)."""
    import torch

    from pdfast.loading import load_ground_truth, load_model

    model = load_model(HERE.parent / rec["folder"])
    g, _ = load_ground_truth(model)
    if g is None:
        return rec
    square = region_square(model)
    for method in ("puredif", "elijah"):
        trig = torch.tensor(rec[method + "_trigger"]).reshape(g.shape)
        rec[method]["fidelity"] = fidelity(trig, g, square)
    return rec


def report(recs: list[dict]) -> str:
    """The markdown tables: firing, then detection with ASR and fidelity."""
    f = stats.fmt_rate
    fire = [[r["name"], r["family"], f(r["asr"]["truth"]["exact"]), f(r["asr"]["truth"]["papers"]),
             f(r["asr"]["plain"]["exact"]), f(r["asr"]["flat-g"]["exact"]), f(r["asr"]["frame-0.5"]["exact"])]
            for r in recs if "asr" in r]
    det = []
    for r in recs:
        a = r.get("asr", {})
        pd, el = r["puredif"], r["elijah"]
        row = [r["name"], pd["verdict"], f"{pd['statistic']} {pd['value']:.4f} / {pd['threshold']:.4f}",
               f"{pd['plain_uniformity']:.4f}",
               f"{pd['trigger_effect']:.3f} / {pd['pattern_effect']:.3f}",
               f"{el['trigger_effect']:.3f} / {el['pattern_effect']:.3f}", el["verdict"]]
        if a:
            fp, fe = r["puredif"]["fidelity"], r["elijah"]["fidelity"]
            row += [f(a["truth"]["exact"]), f(a["puredif"]["exact"]), f(a["elijah"]["exact"]),
                    f"{fp['pattern_cosine']:.2f} / {fe['pattern_cosine']:.2f} "
                    f"(chance {fp['chance_square_cosine']:.2f})",
                    f"{fp['l2']:.1f} / {fe['l2']:.1f}"]
        else:
            row += ["-"] * 5
        det.append(row)
    return ("### Does each backdoor fire from its own trigger? (exact ASR, MSE < 0.02; 0.1 for the papers)\n\n"
            + md_table(fire, ["model", "family", "truth exact", "truth 0.1", "plain noise", "g's flat part",
                              "-0.5 frame"])
            + "\n\n### `pdfast detect` with defaults (PureDiffusion) and Elijah\n\n"
            + md_table(det, ["model", "verdict (shipped statistic)", "statistic / threshold",
                             "no trigger: plain uniformity", "PD trigger / pattern effect",
                             "Elijah trigger / pattern effect", "Elijah verdict", "truth ASR", "PureDiffusion ASR",
                             "Elijah ASR", "pattern cosine PD / Elijah", "L2 PD / Elijah"]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", nargs="*", default=None)
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args(argv)
    unknown = sorted(set(args.only or ()) - set(MODELS))
    if unknown:
        ap.error(f"--only {unknown[0]}: not a model here; choose from {', '.join(MODELS)}")
    names = list(args.only) if args.only else list(MODELS)  # in the order given
    recs = []
    for name in names:
        if args.report_only:
            from pdfast.families import family_of
            from pdfast.loading import load_model

            model = load_model(MODELS[name][0])
            hit = cache_file(name, model, family_of(model, FAMILY_FLAG.get(name)), args.n, args.seed)
            if hit.is_file():
                recs.append(json.loads(hit.read_text()))
            continue
        recs.append(measure_model(name, args.n, args.seed))
    recs = [add_fidelity(r) for r in recs]
    slim = [{k: v for k, v in r.items() if not k.endswith("_trigger")} for r in recs]
    write_json(HERE / "results" / "families.json", {"git": git_info(), "n": args.n, "seed": args.seed,
                                                    "models": slim})
    text = (f"# Attack families (issue 20): firing and detection\n\nWritten by `python research/families.py` "
            f"(n = {args.n} samples per start, seed {args.seed}, 95% Wilson intervals).\n\n{report(recs)}\n")
    (HERE / "results" / "families.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
