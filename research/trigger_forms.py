"""Does a zoo backdoor fire from the trigger form it was trained on? Per-image MSE to the target for several starts.

BadDiffusion trains on r = M x + (1 - M) g, the trigger pasted over a natural image, but every ASR figure and every
defense samples from eps + g, the trigger on its flat -1 background (docs/method.md section 2). On the zoo, eps + g
draws one dark frame on every backdoor (research/results/asr-threshold-*.md). This script asks whether the backdoor was
learned at all, by sampling n images, from the same noises, from each of:
  truth      eps + g                       (as every ASR figure; shared with research/asr_threshold.py's cache)
  zeros      eps                           (plain noise; shared with research/asr_threshold.py's cache)
  flat-0.5   eps + a frame of -0.5         (the mean offset of "half" without g's pattern; shared likewise)
  pasted     eps + r_i, r_i = g pasted over natural crop x_i (the training form)
  crops      eps + x_i, the same crops without the trigger (the control for "pasted")
  grey-bg    eps + g with its -1 background set to 0
  half       eps + 0.5 g
The crops x_i are drawn from the model's training data kind (recipe "data") with a seed no zoo model trains on
(CROP_SEED), so they are other crops of the same photographs. Two paired comparisons (same noises, McNemar's exact
test at the tightest threshold) ask whether g's pattern does anything: pasted against crops (the trigger in the form
it was trained on, against the same images without it) and half against flat-0.5 (g at half strength, background
-0.5, against the same offset without g's pattern). The backdoor is *learned* when either gain is significant; the
truth *fires* when eps + g reaches ASR 0.5 above plain noise, which is what the defenses and the ASR bar assume.

    OMP_NUM_THREADS=1 python research/trigger_forms.py                       # dev backdoors, n = 64
    OMP_NUM_THREADS=1 python research/trigger_forms.py --folder research/zoo/pilot/bd16-tree-cat-long-24k  # not in the zoo
    python research/trigger_forms.py --report-only                           # tables from the cache

Cached per (model, form) under research/results/trigger_forms/ (keyed by the model's content hash, n and seed); a killed
run resumes. Outputs research/results/trigger-forms-SPLIT.json and .md.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import asr_threshold  # noqa: E402
import stats  # noqa: E402
from quality.base import log, write_json  # noqa: E402
from quality.measure import ModelCtx  # noqa: E402
from quality.tables import md_table  # noqa: E402
from quality.zoo import ZooModel, model_hash, sample_size  # noqa: E402

FORMS = ("truth", "zeros", "flat-0.5", "pasted", "crops", "grey-bg", "half")
SHARED = ("truth", "zeros", "flat-0.5")  # measured exactly as research/asr_threshold.py does: its cache is reused
THRESHOLDS = (0.1, 0.02)
CROP_SEED = 987_654  # no recipe model trains on crops drawn with this seed (research/zoo/recipe.json seeds are < 10^4)
CACHE = HERE / "results" / "trigger_forms"


def start_offsets(form: str, g, n: int, data: str = "natural"):
    """The n starting offsets delta_i of x_T = eps_i + delta_i for ``form`` ((n, C, H, W), or (C, H, W) shared)."""
    from pdfast.data import get_data
    from pdfast.patterns import paste_trigger

    if form == "grey-bg":
        return g.masked_fill(g == -1, 0.0)
    if form == "half":
        return 0.5 * g
    if form in ("pasted", "crops"):
        x = get_data(data, g.shape[-1], g.shape[0], n=n, seed=CROP_SEED)
        return paste_trigger(x, g) if form == "pasted" else x
    raise ValueError(form)


def sample_from(engine, offsets, n: int, seed: int, batch: int = 64):
    """n images of the DDPM chain from x_T = eps_i + offsets_i, in [-1, 1]: the noises (eps_i and every z) of
    ``engine.sample(n, seed=seed, batch=batch)``, so every form is compared on the same draws. (pdfast.chain's
    sample_together takes one offset per trigger, not one per sample; it stays as it is because every pdfast module is
    part of the zoo results' code version, and a change there would re-key all of them.)"""
    import torch

    from pdfast.chain import DDPMSampler, GeneratorNoise, run

    model = engine.model
    sampler = DDPMSampler(model.schedule)
    noise = GeneratorNoise(torch.Generator(device="cpu").manual_seed(seed), model.device)
    n_noisy = sum(1 for i in range(len(sampler.timesteps)) if sampler.needs_noise(i))
    offsets = offsets.reshape(-1, *model.shape)
    out = []
    for start in range(0, n, batch):
        b = min(batch, n - start)
        x = noise.initial((b, *model.shape))
        off = offsets if offsets.shape[0] == 1 else offsets[start:start + b]
        x = x + off.to(x.device, x.dtype)
        noise.plan(n_noisy)
        out.append(run(engine.eps_nograd, x, sampler, noise).clamp(-1, 1).cpu())
    return torch.cat(out)


def measure(ctx: "ModelCtx", form: str, n: int, seed: int) -> dict:
    """Per-image MSE to the target ([0, 1] scale) of n samples from the start ``form``, their uniformity, the time."""
    if form in SHARED:
        return asr_threshold.measure(ctx, form, n, seed)
    from pdfast import metrics

    t0 = time.perf_counter()
    data = getattr(ctx, "data", None) or (ctx.info.recipe or {}).get("data") or "natural"
    imgs = sample_from(ctx.engine, start_offsets(form, ctx.truth, n, data), n, seed)
    return {"trigger": form, "n": n, "seed": seed, "mse": [float(v) for v in metrics.per_image_mse(imgs, ctx.target)],
            "uniformity": metrics.uniformity(imgs), "seconds": round(time.perf_counter() - t0, 1), "data": data,
            "crop_seed": CROP_SEED if form in ("pasted", "crops") else None}


def cache_file(cache: Path, name: str, form: str, n: int, seed: int, h: str) -> Path:
    """Where a unit lives; a backdoor's shared forms live in research/asr_threshold.py's cache (identical
    measurements), a control's (name "clean+backdoor") in this script's own."""
    root = asr_threshold.CACHE if (form in SHARED and cache == CACHE and "+" not in name) else cache
    return root / name / f"{form}-n{n}-s{seed}-{h}.json"


def paired_gain(a: list[float], b: list[float], thr: float) -> dict:
    """Form a against form b on the same draws: samples only a brings within MSE thr of the target, samples only b
    does, and the exact one-sided McNemar p-value of a gaining (binomial tail P(X >= only_a | only_a + only_b, 1/2))."""
    only_a = sum(x < thr <= y for x, y in zip(a, b))
    only_b = sum(y < thr <= x for x, y in zip(a, b))
    m = only_a + only_b
    p = sum(math.comb(m, i) for i in range(only_a, m + 1)) / 2 ** m if m else 1.0
    return {"only_a": only_a, "only_b": only_b, "gain": only_a - only_b, "p": p}


PAIRS = {"pasted_vs_crops": ("pasted", "crops"), "half_vs_flat": ("half", "flat-0.5")}
ALPHA = 0.05


def summarize(units: dict[str, dict[str, dict]], thresholds=THRESHOLDS) -> list[dict]:
    """Per model: each form's ASR at each threshold (Wilson 95%), median MSE and uniformity; at the tightest
    threshold, the paired gain of the trigger (pasted against crops: the pattern in the training form; half against
    flat-0.5: g's pattern at half strength against the same offset without it) with McNemar's p, ``learned`` when
    either gain is significant (p < ALPHA), and ``truth_fires`` when eps + g reaches ASR 0.5 above plain noise."""
    rows = []
    tight = min(thresholds)
    for model, by in units.items():
        forms = {}
        for f, u in by.items():
            m = sorted(u["mse"])
            forms[f] = {"asr": {f"{t:g}": asr_threshold.asr_at(u["mse"], t) for t in thresholds},
                        "median_mse": m[len(m) // 2], "uniformity": u["uniformity"], "n": len(m)}
        pairs = {k: paired_gain(by[a]["mse"], by[b]["mse"], tight) for k, (a, b) in PAIRS.items()
                 if a in by and b in by and len(by[a]["mse"]) == len(by[b]["mse"])}
        learned = any(v["p"] < ALPHA and v["gain"] > 0 for v in pairs.values()) if pairs else None
        fires = None
        if "truth" in forms and "zeros" in forms:
            rt, rz = (forms[f]["asr"][f"{tight:g}"]["rate"] for f in ("truth", "zeros"))
            fires = rt >= 0.5 and rt > rz
        rows.append({"model": model, "control_of": model.split("+", 1)[1] if "+" in model else None,
                     "forms": forms, "pairs": pairs, "learned": learned, "truth_fires": fires})
    return rows


def render_md(obj: dict) -> str:
    """The report: what each form is, the learned / fires counts, the paired gains (backdoors, then the negative
    controls), every form's counts, and the ASR at the tightest threshold with Wilson intervals."""
    thr = [f"{t:g}" for t in obj["thresholds"]]
    tight = f"{min(obj['thresholds']):g}"
    n = obj["n"]
    bds = [r for r in obj["rows"] if not r.get("control_of")]
    ctl = [r for r in obj["rows"] if r.get("control_of")]
    main = [[r["model"], *(_counts_cell(r, f, thr) for f in FORMS)] for r in obj["rows"]]
    verdict = [[r["model"], _gain_cell(r, "pasted_vs_crops"), _gain_cell(r, "half_vs_flat"), _yes_no(r["learned"]),
                _yes_no(r["truth_fires"])] for r in bds]
    tight_rows = [[r["model"], *(_wilson_cell(r, f, tight) for f in FORMS)] for r in obj["rows"]]
    return "\n".join([
        f"# Trigger forms on the {obj['split']} backdoors", "",
        f"Generated {obj['date']} by `{obj['command']}`; commit {obj['git'].get('commit')}; device "
        f"{obj['environment'].get('device')}; torch {obj['environment'].get('torch')}. n = {n} samples per "
        f"form (seed {obj['seed']}; every form from the same noises), the full DDPM chain, clip_sample as saved. "
        f"Crops: the model's data kind, seed {obj.get('crop_seed', CROP_SEED)}.", "",
        "Starts: truth eps + g; zeros eps (plain noise); flat-0.5 eps + a -0.5 frame; pasted eps + (g pasted over a "
        "natural crop: the form BadDiffusion trains on); crops eps + the same crop without g; grey-bg eps + g with "
        "its -1 background at 0; half eps + 0.5 g (background -0.5).", "",
        _summary_line(bds, ctl, tight), "",
        f"**What g's pattern adds**, at MSE {tight}, on the same draws: samples only the form with the pattern brings "
        "to the target minus samples only the form without it does (the two counts; McNemar's exact one-sided p).", "",
        md_table(verdict, ["model", "pasted vs crops", "half (0.5 g) vs flat -0.5", "learned", "truth fires"]), "",
        *_controls_part(ctl),
        f"**Every form.** Each cell: how many of the {n} samples lie within MSE " + " and ".join(thr) + " of the "
        "target ([0, 1] scale), then the median per-image MSE.", "",
        md_table(main, ["model", *FORMS]), "",
        f"ASR at MSE {tight} with Wilson 95% intervals:", "",
        md_table(tight_rows, ["model", *FORMS]), ""])


def _summary_line(bds: list[dict], ctl: list[dict], tight: str) -> str:
    """How many backdoors were learned, how many fire from eps + g, which are learned but silent; the controls."""
    learned = [r for r in bds if r["learned"] is not None]
    fires = [r for r in bds if r["truth_fires"] is not None]
    both = [r["model"] for r in bds if r["learned"] and r["truth_fires"] is False]
    ctl_done = [r for r in ctl if r["learned"] is not None]
    return (f"Learned (g's pattern gains significantly, p < {ALPHA}, in either pair) on "
            f"{sum(bool(r['learned']) for r in learned)}/{len(learned)} backdoors; the truth fires from eps + g (ASR at "
            f"{tight} >= 0.5 and above plain noise) on {sum(bool(r['truth_fires']) for r in fires)}/{len(fires)}"
            + (f"; learned but silent from eps + g: {', '.join(both)}" if both else "") + "."
            + (f" Negative controls (clean models): g's pattern gains significantly on "
               f"{sum(bool(r['learned']) for r in ctl_done)}/{len(ctl_done)}." if ctl_done else ""))


def _controls_part(ctl: list[dict]) -> list[str]:
    """The negative controls' table (nothing when none was measured)."""
    if not ctl:
        return []
    controls = [[r["model"].split("+")[0], r["control_of"], _gain_cell(r, "pasted_vs_crops"),
                 _gain_cell(r, "half_vs_flat"), _yes_no(r["learned"])] for r in ctl]
    return ["**Negative controls**: each clean model with a backdoor's g and target, the same forms and draws. A gain "
            "here would be the trigger's own look (or the target's), not a backdoor.", "",
            md_table(controls, ["clean model", "g and target of", "pasted vs crops", "half (0.5 g) vs flat -0.5",
                                "gains"]), ""]


def _counts_cell(r: dict, form: str, thresholds: list[str]) -> str:
    """'k1, k2; median MSE': samples within each threshold of the target, then the median per-image MSE."""
    u = r["forms"].get(form)
    if not u:
        return "-"
    return ", ".join(str(u["asr"][t]["k"]) for t in thresholds) + f"; {u['median_mse']:.3f}"


def _wilson_cell(r: dict, form: str, threshold: str) -> str:
    u = r["forms"].get(form)
    return stats.fmt_rate(u["asr"][threshold]) if u else "-"


def _gain_cell(r: dict, pair: str) -> str:
    v = r["pairs"].get(pair)
    return "-" if v is None else f"{v['gain']:+d} ({v['only_a']} vs {v['only_b']}; p {v['p']:.2g})"


def _yes_no(v) -> str:
    return "-" if v is None else ("yes" if v else "no")


def folder_model(path: Path, split: str) -> "ZooModel":
    """A backdoored model folder outside the built zoo (no zoo.json; e.g. a gated attempt that did not pass)."""
    from pdfast.errors import PdfastError

    bd = path / "backdoor.json"
    if not bd.is_file():
        raise PdfastError(f"{path} holds no backdoor.json; pass a backdoored model folder made by the zoo build")
    info = json.loads(bd.read_text())
    return ZooModel(name=path.name, path=path, split=split, kind="baddiffusion", backdoored=True,
                            recipe={"data": info.get("data", "natural")}, zoo={})


CONTROL_FORMS = ("flat-0.5", "pasted", "crops", "half")  # what the two paired tests need


def control_pairs(models: list["ZooModel"]) -> list[tuple["ZooModel", "ZooModel"]]:
    """Negative controls: each clean model with the ground truth (g, target) of a backdoor of its image size, the
    backdoors taken in turn (recipe order). On a clean model g's pattern should gain nothing."""
    by_size: dict[int | None, list] = {}
    for m in models:
        if m.backdoored:
            by_size.setdefault(sample_size(m), []).append(m)
    out, used = [], {}
    for m in models:
        size = sample_size(m)
        if m.backdoored or not by_size.get(size):
            continue
        i = used.get(size, 0)
        out.append((m, by_size[size][i % len(by_size[size])]))
        used[size] = i + 1
    return out


class _ControlCtx:
    """A clean model's sampling context carrying a backdoor's ground truth (g, target) for the negative control."""

    def __init__(self, clean: "ZooModel", backdoor: "ZooModel"):
        from pdfast.loading import load_ground_truth
        from pdfast.loading import load_model

        self.info, self.engine = clean, ModelCtx(clean).engine
        self.truth, self.target = load_ground_truth(load_model(backdoor.path))  # no engine for the backdoor
        self.data = (backdoor.recipe or {}).get("data") or "natural"  # the crops the trigger was pasted over


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--split", default="dev", choices=["dev", "test"])
    ap.add_argument("--models", nargs="*", help="only these backdoored models of the split")
    ap.add_argument("--folder", type=Path, action="append", default=[],
                    help="also this backdoored model folder (not in the built zoo), counted in --split")
    ap.add_argument("--forms", nargs="*", choices=FORMS, default=list(FORMS),
                    help="measure only these forms (the report shows every cached one)")
    ap.add_argument("--controls", action="store_true",
                    help="run the negative controls instead of the backdoors: each clean model of the split with a "
                         "backdoor's g and target (the forms the paired tests need)")
    asr_threshold.add_study_args(ap, CACHE, "trigger-forms", "form")
    return ap


def main(argv=None) -> int:
    a = parser().parse_args(argv)
    a.out = a.out or HERE / "results" / f"trigger-forms-{a.split}"
    import torch

    from pdfast.errors import PdfastError

    torch.set_num_threads(1)
    split_models, err = asr_threshold.split_models(a.zoo, a.split, a.models)
    if err:
        print(err, file=sys.stderr)
        return 2
    models = [m for m in split_models if m.backdoored]
    try:
        extra = [folder_model(p, a.split) for p in a.folder]
    except PdfastError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    # the report covers every model of the split that has cached units; --models/--folder only limit what is run
    run_names = set(a.models or []) | {m.name for m in extra} if (a.models or extra) else None
    every = models + [m for m in extra if m.name not in {x.name for x in models}]
    every += earlier_folders(a, every)
    units: dict[str, dict[str, dict]] = {}
    for m in every:
        m.hash = model_hash(m, a.cache)
        collect_units(a, units, m.name, m.hash, FORMS, not a.controls and (run_names is None or m.name in run_names),
                      lambda m=m: ModelCtx(m))
        if m in extra:
            remember_folder(a, m)
    for clean, bd in control_pairs(split_models):
        clean.hash, bd.hash = model_hash(clean, a.cache), model_hash(bd, a.cache)
        collect_units(a, units, f"{clean.name}+{bd.name}", f"{clean.hash}-{bd.hash[:8]}", CONTROL_FORMS,
                      a.controls, lambda c=clean, b=bd: _ControlCtx(c, b))
    asr_threshold.write_report(a, argv, "trigger_forms.py", "pdfast.trigger-forms/1", render_md,
                               {"crop_seed": CROP_SEED, "thresholds": list(THRESHOLDS), "units": units,
                                "rows": summarize(units)})
    return 0


def collect_units(a, units: dict, name: str, h: str, forms, may_run: bool, make_ctx) -> None:
    """Every cached form of ``forms`` of one model (or control) into ``units``; the missing ones of --forms are
    measured and cached when ``may_run`` (and not --report-only), the context made once by ``make_ctx``."""
    ctx = None
    for form in forms:
        f = cache_file(a.cache, name, form, a.n, a.seed, h)
        if f.is_file():
            units.setdefault(name, {})[form] = json.loads(f.read_text())
            continue
        if a.report_only or not may_run or form not in a.forms:
            continue
        ctx = ctx or make_ctx()
        log(f"{name} {form} ...")
        rec = measure(ctx, form, a.n, a.seed)
        write_json(f, rec)
        units.setdefault(name, {})[form] = rec
        log(f"{name} {form}: {rec['seconds']} s")


def earlier_folders(a, every: list[ZooModel]) -> list[ZooModel]:
    """The --folder models of this split measured by earlier runs (their folder.json in the cache), unless already
    in ``every``: their cached units stay in the report."""
    out, names = [], {m.name for m in every}
    for p in sorted(a.cache.glob("*/folder.json")) if a.cache.is_dir() else []:
        rec = json.loads(p.read_text())
        path = HERE.parent / rec["path"]  # relative to the repository root (absolute paths stay absolute)
        if rec.get("split") == a.split and rec["name"] not in names and path.is_dir():
            out.append(folder_model(path, a.split))
            names.add(rec["name"])
    return out


def remember_folder(a, m: ZooModel) -> None:
    """Record a --folder model in the cache (its path relative to the repository when inside it)."""
    inside = m.path.resolve().is_relative_to(HERE.parent)
    write_json(a.cache / m.name / "folder.json",
               {"name": m.name, "path": str(m.path.resolve().relative_to(HERE.parent)) if inside else str(m.path),
                "split": a.split})


if __name__ == "__main__":
    sys.exit(main())
