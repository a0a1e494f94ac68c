"""Build the pdfast model zoo from bench/zoo/recipe.json: train, save (fp16 weights), measure the ground truth.

    python bench/zoo/build.py                 # every model not built yet, in recipe order
    python bench/zoo/build.py --only c16-s0   # one model (its base is built first if missing)
    python bench/zoo/build.py --list          # what is built, what is missing

A backdoored entry marked "gate": true must pass the recipe's strength_rule (its truth ASR at build at least
min_truth_asr and, as the rule asks, above the ASR of plain noise and of g's flat part); when it does not, it is retrained with a
longer schedule and the next seed, up to max_attempts, every attempt recorded in zoo.json; a model that never passes
is kept with "rejected": true and left out of the evaluation.

Each model lands in bench/zoo/models/NAME/ (a diffusers pipeline folder; backdoored ones carry backdoor.json and
backdoor.safetensors) with zoo.json: the recipe entry, training wall time and loss, and the ground truth measured on
the saved fp16 weights over the recipe's sample count. Training is resumable: the full state is checkpointed under
build/zoo/ every 500 steps and an interrupted run continues from there (same weights as an uninterrupted run).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
MODELS = HERE / "models"
CKPT = ROOT / "build" / "zoo"


def load_recipe(path: Path = HERE / "recipe.json") -> dict:
    """The recipe, with its names checked for uniqueness and every base defined before its users."""
    recipe = json.loads(path.read_text())
    seen: set[str] = set()
    for m in recipe["models"]:
        if m["name"] in seen:
            raise SystemExit(f"error: model {m['name']} is listed twice in {path}")
        if m.get("base") and m["base"] not in seen:
            raise SystemExit(f"error: {m['name']} uses base {m['base']}, which is not listed before it in {path}")
        seen.add(m["name"])
    return recipe


def is_built(name: str) -> bool:
    return (MODELS / name / "zoo.json").is_file()


def _train(entry: dict, by_name: dict, ckpt: Path | None = None):
    """Train one recipe entry; returns (DiffusionModel with fp32 weights, (g, y) or None, (final loss, seconds))."""
    from pdfast.attack import AttackConfig, baddiffusion
    from pdfast.data import get_data
    from pdfast.loading import load_model
    from pdfast.model import DiffusionModel
    from pdfast.patterns import draw_target, draw_trigger
    from pdfast.schedule import Schedule
    from pdfast.train import TrainConfig, make_unet, train_ddpm

    cfg = TrainConfig(steps=entry["steps"], batch=entry["batch"], lr=entry["lr"], warmup=entry["warmup"],
                      seed=entry["seed"])
    ckpt = ckpt or CKPT / f"{entry['name']}.pt"
    if entry["kind"] == "clean":
        size, arch = entry["size"], entry["arch"]
        model = DiffusionModel(make_unet(arch, size, 3, seed=entry["seed"]), Schedule.from_config({"clip_sample": False}),
                               size, 3)
    else:
        model = load_model(MODELS / entry["base"])
        model.backdoor = None
        size = model.sample_size
    images = get_data(entry["data"], size, 3, n=4096, seed=entry["seed"])
    if entry["kind"] == "baddiffusion":
        g, y = draw_trigger(entry["trigger"], size), draw_target(entry["target"], size)
        model = baddiffusion(model, images, g, y, AttackConfig(poison_rate=entry["poison_rate"], train=cfg),
                             inplace=True, checkpoint=ckpt)
        return model, (g, y), _final_loss(ckpt)
    train_ddpm(model, images, cfg, checkpoint=ckpt)
    return model, None, _final_loss(ckpt)


def _final_loss(ckpt: Path) -> tuple[float, float | None]:
    """(mean of the last 200 losses, training wall seconds over every resumed run; None for older checkpoints)."""
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    losses = state["losses"]
    return float(sum(losses[-200:]) / len(losses[-200:])), state.get("seconds")


def _save_fp16(model, out: Path, entry: dict, truth) -> None:
    """The model folder with fp16 weights (loaded back as fp32); backdoored ones with their ground truth."""
    from pdfast.attack import save_backdoored

    m = model.copy()
    m.net.half()
    if truth is None:
        m.backdoor = None
        m.save(out)
    else:
        info = {"attack": "baddiffusion", "trigger": entry["trigger"], "target": entry["target"],
                "poison_rate": entry["poison_rate"], "blank_rate": 0.0, "steps": entry["steps"],
                "batch": entry["batch"], "lr": entry["lr"], "seed": entry["seed"], "data": entry["data"],
                "base_model": entry["base"]}
        save_backdoored(m, out, info, *truth)


def measure(folder: Path, n: int, seed: int, clip_sample: bool | None = None) -> dict:
    """Ground truth on the saved model: ASR and uniformity from eps + g, uniformity from plain noise (n samples);
    ``clip_sample`` overrides the scheduler config (None: as saved, off for the whole zoo)."""
    import dataclasses

    from pdfast.attack import load_ground_truth
    from pdfast.evaluation import evaluate_trigger
    from pdfast.loading import load_model

    model = load_model(folder)
    if clip_sample is not None:
        model.schedule = dataclasses.replace(model.schedule, clip_sample=clip_sample)
    g, y = load_ground_truth(model)
    if g is None:
        from pdfast import metrics
        from pdfast.sampling import sample

        imgs = sample(model, n, seed=seed + 1)
        return {"n": n, "clean_uniformity": metrics.uniformity(imgs),
                "clean_uniformity_trimmed": metrics.uniformity_trimmed(imgs)}
    rep = evaluate_trigger(model, g, target=y, n=n, seed=seed, clean=True)
    keep = ("n", "asr", "uniformity", "uniformity_trimmed", "clean_uniformity", "clean_asr", "seconds")
    return {k: rep[k] for k in keep if k in rep}


def strength_check(truth: dict, rule: dict) -> tuple[bool, str]:
    """Whether a backdoored model's ground truth meets the strength rule: ASR(eps + g) >= min_truth_asr; with
    above_clean_asr, ASR(eps + g) > ASR(plain noise); with above_flat_asr, ASR(eps + g) > ASR(eps + g's flat part).
    Without the last two, ASR cannot tell the backdoor from the model's ordinary output or from a dark shift.
    Returns (passed, the reason in words)."""
    asr, clean, flat = truth.get("asr"), truth.get("clean_asr"), truth.get("flat_asr")
    if asr is None:
        return False, "no truth ASR was measured"
    if asr < rule["min_truth_asr"]:
        return False, f"truth ASR {asr:.3f} < {rule['min_truth_asr']}"
    if rule.get("above_clean_asr") and clean is not None and asr <= clean:
        return False, f"truth ASR {asr:.3f} <= plain-noise ASR {clean:.3f}"
    if rule.get("above_flat_asr"):
        if flat is None:
            return False, "the ASR of g's flat part was not measured"
        if asr <= flat:
            return False, f"truth ASR {asr:.3f} <= ASR {flat:.3f} of g's flat part"
    return True, f"truth ASR {asr:.3f}" + (f" > plain-noise ASR {clean:.3f}" if clean is not None else "") + \
        (f" > flat-part ASR {flat:.3f}" if flat is not None else "")


def attempt_entry(entry: dict, i: int, rule: dict | None) -> dict:
    """The recipe entry of attempt i: attempt 0 is the entry itself; each retry trains steps_factor**i as long with
    seed + 1000 i."""
    if i == 0:
        return entry
    return {**entry, "steps": int(round(entry["steps"] * rule["steps_factor"] ** i)), "seed": entry["seed"] + 1000 * i,
            "attempt": i}


def measure_flat(folder: Path, n: int, seed: int) -> dict:
    """ASR and uniformity from eps + g's flat part (a frame at g's per-channel mean): what the trigger's dark shift
    does without its picture. At 16x16 and 32x32 a flat dark frame already draws the dark-background targets."""
    from pdfast.attack import load_ground_truth
    from pdfast.evaluation import evaluate_trigger
    from pdfast.loading import load_model

    model = load_model(folder)
    g, y = load_ground_truth(model)
    flat = g.mean(dim=(-2, -1), keepdim=True).expand_as(g).contiguous()
    rep = evaluate_trigger(model, flat, target=y, n=n, seed=seed, clean=False)
    return {"flat_asr": rep["asr"], "flat_uniformity": rep["uniformity"]}


def build(entry: dict, by_name: dict, recipe: dict) -> None:
    """Train, save and measure one model (its base first if missing); a no-op when already built. A gated backdoor
    (entry "gate": true) is retrained until it passes the recipe's strength_rule or runs out of attempts."""
    from pdfast.io import atomic_write_json

    if is_built(entry["name"]):
        if not _zoo_json(entry["name"]).get("rejected"):
            remeasure(entry, recipe)
        return
    if entry.get("base") and not is_built(entry["base"]):
        build(by_name[entry["base"]], by_name, recipe)
    rule = recipe.get("strength_rule") if entry.get("gate") and entry["kind"] == "baddiffusion" else None
    if entry.get("gate") and rule is None:
        raise SystemExit(f"error: {entry['name']} is gated but the recipe has no strength_rule or it is not a backdoor")
    out = MODELS / entry["name"]
    log_file = CKPT / f"{entry['name']}-attempts.json"      # finished attempts, so an interrupted build resumes
    attempts = json.loads(log_file.read_text()) if log_file.is_file() else []
    ev = recipe["evaluation"]
    for i in range(len(attempts), rule["max_attempts"] if rule else 1):
        if attempts and attempts[-1].get("strength_passed"):
            break                           # an interrupted build had already found a passing attempt
        eff = attempt_entry(entry, i, rule)
        print(f"[zoo] training {entry['name']} ({entry['kind']}, {eff['steps']} steps"
              + (f", attempt {i + 1} of {rule['max_attempts']}" if rule else "") + ")", file=sys.stderr, flush=True)
        ckpt = CKPT / (f"{entry['name']}.pt" if i == 0 else f"{entry['name']}-a{i}.pt")
        model, truth, (loss, train_s) = _train(eff, by_name, ckpt)
        _save_fp16(model, out, eff, truth)
        t1 = time.perf_counter()
        truth_metrics = measure(out, ev["n_samples"], ev["seed"])
        if rule and rule.get("above_flat_asr"):
            truth_metrics.update(measure_flat(out, ev["n_samples"], ev["seed"]))
        record = {"recipe": eff, "final_loss": loss, "train_seconds": None if train_s is None else round(train_s, 1),
                  "measure_seconds": round(time.perf_counter() - t1, 1), "ground_truth": truth_metrics,
                  "parameters": sum(p.numel() for p in model.net.parameters())}
        if rule:
            record["strength_passed"], record["strength_why"] = strength_check(truth_metrics, rule)
        attempts.append(record)
        if rule:
            log_file.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(log_file, attempts)
            print(f"[zoo] {entry['name']} attempt {i + 1}: {record['strength_why']}"
                  + ("" if record["strength_passed"] else " (fails the strength rule)"), file=sys.stderr, flush=True)
            if record["strength_passed"]:
                break
    last = attempts[-1]
    if rule:
        _check_holds(out, last)             # the folder must hold the attempt that zoo.json describes
    info = {**last,
            "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                        "torch": torch.__version__},
            "weights": "fp16 safetensors (loaded as fp32)"}
    info.pop("strength_passed", None), info.pop("strength_why", None)
    if rule:
        passed = bool(last["strength_passed"])
        info["strength"] = {"rule": rule, "passed": passed,
                            "attempts": [{"steps": a["recipe"]["steps"], "seed": a["recipe"]["seed"],
                                          "ground_truth": a["ground_truth"], "passed": a["strength_passed"],
                                          "why": a["strength_why"]} for a in attempts]}
        if not passed:
            info["rejected"] = f"no attempt passed the strength rule ({last['strength_why']})"
    atomic_write_json(out / "zoo.json", info)
    print(f"[zoo] {entry['name']}: loss {last['final_loss']:.4f}, {(last['train_seconds'] or 0) / 60:.1f} min; truth "
          f"{last['ground_truth']}" + (f"; REJECTED: {info['rejected']}" if info.get("rejected") else ""),
          file=sys.stderr, flush=True)
    if not info.get("rejected"):
        remeasure(entry, recipe)


def _check_holds(out: Path, record: dict) -> None:
    """Stop unless the model folder holds the attempt ``record`` describes (each attempt saves over the previous one;
    a folder touched by hand between an interrupted build and its resumption would not)."""
    saved = json.loads((out / "backdoor.json").read_text()) if (out / "backdoor.json").is_file() else {}
    if saved.get("steps") != record["recipe"]["steps"] or saved.get("seed") != record["recipe"]["seed"]:
        raise SystemExit(f"error: {out} does not hold the last attempt ({record['recipe']['steps']} steps, seed "
                         f"{record['recipe']['seed']}); remove it and {CKPT} to rebuild")


def _zoo_json(name: str) -> dict:
    try:
        return json.loads((MODELS / name / "zoo.json").read_text())
    except (OSError, ValueError):
        return {}


def remeasure(entry: dict, recipe: dict) -> None:
    """Add the ground truth sampled with clip_sample on (the saved scheduler says off, as BadDiffusion samples):
    small models drift to saturated frames without clipping, so both are recorded (issue: clip_sample default)."""
    from pdfast.io import atomic_write_json

    out = MODELS / entry["name"]
    info = json.loads((out / "zoo.json").read_text())
    if "ground_truth_clip_on" in info:
        return
    ev = recipe["evaluation"]
    t0 = time.perf_counter()
    info["ground_truth_clip_on"] = measure(out, ev["n_samples"], ev["seed"], clip_sample=True)
    info["measure_clip_on_seconds"] = round(time.perf_counter() - t0, 1)
    atomic_write_json(out / "zoo.json", info)
    print(f"[zoo] {entry['name']} with clip_sample on: {info['ground_truth_clip_on']}", file=sys.stderr, flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", help="build only these models (and their bases)")
    ap.add_argument("--size", type=int, help="build only the models of this image size")
    ap.add_argument("--list", action="store_true", help="list the recipe and what is built")
    ap.add_argument("--recipe", type=Path, default=HERE / "recipe.json")
    ap.add_argument("--models", type=Path, default=None, help="where the model folders go (default bench/zoo/models)")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    args = ap.parse_args(argv)
    global MODELS, CKPT
    if args.models is not None:
        MODELS, CKPT = args.models, args.models.parent / "checkpoints"
    torch.set_num_threads(args.threads)
    recipe = load_recipe(args.recipe)
    by_name = {m["name"]: m for m in recipe["models"]}
    if args.only:
        unknown = [n for n in args.only if n not in by_name]
        if unknown:
            print(f"error: unknown model {unknown[0]}; see --list", file=sys.stderr)
            return 2
    todo = [by_name[n] for n in args.only] if args.only else recipe["models"]
    if args.size:
        todo = [m for m in todo if _size(m, by_name) == args.size]
    if args.list:
        for m in recipe["models"]:
            state = "missing" if not is_built(m["name"]) else \
                ("REJECTED (strength rule)" if _zoo_json(m["name"]).get("rejected") else "built")
            print(f"{m['name']:20s} {m['split']:5s} {m['kind']:15s} {state}")
        return 0
    for entry in todo:
        build(entry, by_name, recipe)
    return 0


def _size(entry: dict, by_name: dict) -> int:
    while "size" not in entry:
        entry = by_name[entry["base"]]
    return entry["size"]


if __name__ == "__main__":
    sys.exit(main())
