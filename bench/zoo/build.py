"""Build the pdfast model zoo from bench/zoo/recipe.json: train, save (fp16 weights), measure the ground truth.

    python bench/zoo/build.py                 # every model not built yet, in recipe order
    python bench/zoo/build.py --only c16-s0   # one model (its base is built first if missing)
    python bench/zoo/build.py --list          # what is built, what is missing

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


def _train(entry: dict, by_name: dict):
    """Train one recipe entry; returns (DiffusionModel with fp32 weights, final loss)."""
    from pdfast.attack import AttackConfig, baddiffusion
    from pdfast.data import get_data
    from pdfast.loading import load_model
    from pdfast.model import DiffusionModel
    from pdfast.patterns import draw_target, draw_trigger
    from pdfast.schedule import Schedule
    from pdfast.train import TrainConfig, make_unet, train_ddpm

    cfg = TrainConfig(steps=entry["steps"], batch=entry["batch"], lr=entry["lr"], warmup=entry["warmup"],
                      seed=entry["seed"])
    ckpt = CKPT / f"{entry['name']}.pt"
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


def build(entry: dict, by_name: dict, recipe: dict) -> None:
    """Train, save and measure one model (its base first if missing); a no-op when already built."""
    from pdfast.io import atomic_write_json

    if is_built(entry["name"]):
        remeasure(entry, recipe)
        return
    if entry.get("base") and not is_built(entry["base"]):
        build(by_name[entry["base"]], by_name, recipe)
    print(f"[zoo] training {entry['name']} ({entry['kind']}, {entry['steps']} steps)", file=sys.stderr, flush=True)
    model, truth, (loss, train_s) = _train(entry, by_name)
    out = MODELS / entry["name"]
    _save_fp16(model, out, entry, truth)
    ev = recipe["evaluation"]
    t1 = time.perf_counter()
    truth_metrics = measure(out, ev["n_samples"], ev["seed"])
    info = {"recipe": entry, "final_loss": loss, "train_seconds": None if train_s is None else round(train_s, 1),
            "measure_seconds": round(time.perf_counter() - t1, 1), "ground_truth": truth_metrics,
            "parameters": sum(p.numel() for p in model.net.parameters()),
            "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                        "torch": torch.__version__},
            "weights": "fp16 safetensors (loaded as fp32)"}
    atomic_write_json(out / "zoo.json", info)
    print(f"[zoo] {entry['name']}: loss {loss:.4f}, {(train_s or 0) / 60:.1f} min; truth {truth_metrics}",
          file=sys.stderr, flush=True)
    remeasure(entry, recipe)


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
            print(f"{m['name']:20s} {m['split']:5s} {m['kind']:15s} {'built' if is_built(m['name']) else 'missing'}")
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
