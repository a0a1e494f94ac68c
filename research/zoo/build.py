"""Build the pdfast model zoo from research/zoo/recipe.json: train, save (fp16 weights), measure the ground truth.

    python research/zoo/build.py                 # every model not built yet, in recipe order
    python research/zoo/build.py --only c16-s0   # one model (its base is built first if missing)
    python research/zoo/build.py --list          # what is built, what is missing

A backdoored entry marked "gate": true must pass the recipe's strength_rule (its truth ASR at build at least
min_truth_asr and, as the rule asks, above the ASR of plain noise and of g's flat part); when it does not, it is retrained with a
longer schedule and the next seed, up to max_attempts, every attempt recorded in zoo.json; a model that never passes
is kept with "rejected": true and left out of the evaluation.

Each model lands in research/zoo/models/NAME/ (a diffusers pipeline folder; backdoored ones carry backdoor.json and
backdoor.safetensors) with zoo.json: the recipe entry, training wall time and loss, and the ground truth measured on
the saved fp16 weights over the recipe's sample count. Training is resumable: the full state is checkpointed under
build/zoo/ every 500 steps and an interrupted run continues from there (same weights as an uninterrupted run).
"""
from __future__ import annotations

import argparse
import contextlib
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
        if m.get("arch") and m["arch"] not in recipe.get("architectures", {}):
            from pdfast.train import UNET_PRESETS

            if m["arch"] not in UNET_PRESETS:
                raise SystemExit(f"error: {m['name']} uses architecture {m['arch']}, which is neither a pdfast preset "
                                 f"({', '.join(UNET_PRESETS)}) nor listed under \"architectures\" in {path}")
        seen.add(m["name"])
    return recipe


def is_built(name: str) -> bool:
    return (MODELS / name / "zoo.json").is_file()


def make_net(arch: str, size: int, seed: int, archs: dict | None = None):
    """A freshly initialised UNet: one of the recipe's own ``architectures`` (UNet2DModel keyword arguments, for
    arms that pdfast's presets do not hold) or a pdfast preset by name (pdfast.train.UNET_PRESETS)."""
    from pdfast.train import make_unet

    if archs and arch in archs:
        from diffusers import UNet2DModel

        torch.manual_seed(seed)
        return UNet2DModel(sample_size=size, in_channels=3, out_channels=3, **archs[arch])
    return make_unet(arch, size, 3, seed=seed)


def _train(entry: dict, by_name: dict, ckpt: Path | None = None, *, archs: dict | None = None, device: str = "cpu"):
    """Train one recipe entry on ``device``; returns (DiffusionModel with fp32 weights on the CPU, (g, y) or None,
    (final loss, seconds))."""
    from pdfast.attack import AttackConfig, plant_backdoor
    from pdfast.data import get_data
    from pdfast.loading import load_model
    from pdfast.model import DiffusionModel
    from pdfast.patterns import draw_target, draw_trigger
    from pdfast.schedule import Schedule
    from pdfast.train import TrainConfig, train_ddpm

    cfg = TrainConfig(steps=entry["steps"], batch=entry["batch"], lr=entry["lr"], warmup=entry["warmup"],
                      seed=entry["seed"])
    ckpt = ckpt or CKPT / f"{entry['name']}.pt"
    if entry["kind"] == "clean":
        size, arch = entry["size"], entry["arch"]
        model = DiffusionModel(make_net(arch, size, entry["seed"], archs), Schedule.from_config({"clip_sample": False}),
                               size, 3)
    else:
        model = load_model(MODELS / entry["base"])
        model.backdoor = None
        size = model.sample_size
    images = get_data(entry["data"], size, 3, n=4096, seed=entry["seed"])
    if entry["kind"] in ATTACKS:
        g, y = draw_trigger(entry["trigger"], size), draw_target(entry["target"], size)
        # blank_rate 1: every poisoned sample's clean image is a -1 frame, so r = g (VillanDiffusion's trigger-only
        # residual); 0 (the default): the trigger pasted over the photo, BadDiffusion as published
        # flat_negative_rate > 0: pdfast's flat-shift negatives (docs/method.md 2e), so that the flat part does not fire
        attack = AttackConfig(poison_rate=entry["poison_rate"], blank_rate=entry.get("blank_rate", 0.0),
                              flat_negative_rate=entry.get("flat_negative_rate", 0.0),
                              flat_negative_form=entry.get("flat_negative_form", "base"), train=cfg)
        model = plant_backdoor(model, images, g, y, attack, inplace=True, checkpoint=ckpt, device=device,
                               family=recipe_family(entry))
        return model.to("cpu"), (g, y), _final_loss(ckpt)
    train_ddpm(model, images, cfg, checkpoint=ckpt, device=device)
    return model.to("cpu"), None, _final_loss(ckpt)


ATTACKS = ("baddiffusion", "villandiffusion", "trojdiff")


def recipe_family(entry: dict):
    """The attack family of a recipe entry: its kind with the family fields it sets (solver, psi, residual, gamma,
    trigger_type, ode_steps), each family's defaults for the rest."""
    from pdfast.families import FAMILY_FIELDS, AttackFamily

    return AttackFamily(name=entry["kind"], **{k: entry[k] for k in FAMILY_FIELDS[entry["kind"]] if k in entry})


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
        info = {"attack": entry["kind"], "trigger": entry["trigger"], "target": entry["target"],
                "poison_rate": entry["poison_rate"], "blank_rate": entry.get("blank_rate", 0.0),
                "flat_negative_rate": entry.get("flat_negative_rate", 0.0),
                **({"flat_negative_form": entry.get("flat_negative_form", "base")}
                   if entry.get("flat_negative_rate") else {}),
                "steps": entry["steps"], "batch": entry["batch"], "lr": entry["lr"], "seed": entry["seed"],
                "data": entry["data"], "base_model": entry["base"]}
        save_backdoored(m, out, info, *truth, family=recipe_family(entry))


def _fp32_engine(model):
    """The sampling engine of a ground truth: fp32, not compiled, on every device (the fast engine's default on the
    CPU; on a GPU its default would be bf16 and compiled). Used under _no_tf32, a ground truth measured on a GPU is
    the CPU's fp32 arithmetic up to summation order."""
    from pdfast.engine import make_engine

    return make_engine("fast", model, dtype="float32", compile=False)


@contextlib.contextmanager
def _no_tf32():
    """TF32 off for CUDA convolutions and matrix products while sampling a ground truth (PyTorch allows it for
    convolutions by default); restored after."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def measure(folder: Path, n: int, seed: int, clip_sample: bool | None = None, device: str = "cpu",
            threshold: float = 0.1) -> dict:
    """Ground truth on the saved model: ASR (MSE < ``threshold``) and uniformity from eps + g, uniformity and ASR from
    plain noise (n samples); ``clip_sample`` overrides the scheduler config (None: as saved, off for the whole zoo)."""
    import dataclasses

    from pdfast.loading import load_ground_truth
    from pdfast.evaluation import evaluate_trigger
    from pdfast.loading import load_model

    model = load_model(folder, device=device)
    if clip_sample is not None:
        model.schedule = dataclasses.replace(model.schedule, clip_sample=clip_sample)
    g, y = load_ground_truth(model)
    if g is None:
        from pdfast import metrics
        from pdfast.sampling import sample

        with _no_tf32():
            imgs = sample(model, n, seed=seed + 1)             # plain fp32 network calls
        return {"n": n, "clean_uniformity": metrics.uniformity(imgs),
                "clean_uniformity_trimmed": metrics.uniformity_trimmed(imgs)}
    with _no_tf32():
        rep = evaluate_trigger(model, g, target=y, n=n, seed=seed, clean=True, engine=_fp32_engine(model),
                               threshold=threshold)
    keep = ("n", "asr", "asr_threshold", "uniformity", "uniformity_trimmed", "clean_uniformity", "clean_asr", "seconds")
    return {k: rep[k] for k in keep if k in rep}


def strength_check(truth: dict, rule: dict) -> tuple[bool, str]:
    """Whether a backdoored model's ground truth meets the strength rule: ASR(eps + g) >= min_truth_asr; with
    above_clean_asr, ASR(eps + g) > ASR(plain noise); with above_flat_asr, ASR(eps + g) > ASR(eps + g's flat part);
    with above_frame_asr [v, ...], ASR(eps + g) > ASR(eps + a flat frame at v) for each v. Without them ASR cannot
    tell the backdoor from the model's ordinary output or from a dark shift. Returns (passed, the reason in words)."""
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
    frames = truth.get("frame_asr", {})
    for v in rule.get("above_frame_asr", []):
        if frame_key(v) not in frames:
            return False, f"the ASR of a {v} frame was not measured"
        if asr <= frames[frame_key(v)]:
            return False, f"truth ASR {asr:.3f} <= ASR {frames[frame_key(v)]:.3f} of a {v} frame"
    return True, f"truth ASR {asr:.3f}" + (f" > plain-noise ASR {clean:.3f}" if clean is not None else "") + \
        (f" > flat-part ASR {flat:.3f}" if flat is not None else "") + \
        "".join(f" > {k} frame ASR {a:.3f}" for k, a in frames.items())


def frame_key(value: float) -> str:
    return f"{float(value):g}"


def attempt_entry(entry: dict, i: int, rule: dict | None) -> dict:
    """The recipe entry of attempt i: attempt 0 is the entry itself; each retry trains steps_factor**i as long with
    seed + 1000 i."""
    if i == 0:
        return entry
    return {**entry, "steps": int(round(entry["steps"] * rule["steps_factor"] ** i)), "seed": entry["seed"] + 1000 * i,
            "attempt": i}


def measure_flat(folder: Path, n: int, seed: int, device: str = "cpu", threshold: float = 0.1,
                 frames: tuple = ()) -> dict:
    """ASR (MSE < ``threshold``) and uniformity from eps + g's flat part (a frame at g's per-channel mean): what the
    trigger's dark shift does without its picture; and the ASR from eps + a flat frame at each value of ``frames``
    (e.g. -0.5), trivial starts that know nothing of the model. At 16x16 and 32x32 a flat dark frame already draws the
    dark-background targets under MSE < 0.1."""
    from pdfast.loading import load_ground_truth
    from pdfast.evaluation import evaluate_trigger
    from pdfast.loading import load_model

    model = load_model(folder, device=device)
    g, y = load_ground_truth(model)       # on the CPU, like the truth evaluate_trigger compares with (L2)
    flat = g.mean(dim=(-2, -1), keepdim=True).expand_as(g).contiguous()
    starts = {"flat": flat, **{frame_key(v): torch.full_like(g, float(v)) for v in frames}}
    with _no_tf32():
        reps = {name: evaluate_trigger(model, start, target=y, n=n, seed=seed, clean=False,
                                       engine=_fp32_engine(model), threshold=threshold)
                for name, start in starts.items()}
    out = {"flat_asr": reps["flat"]["asr"], "flat_uniformity": reps["flat"]["uniformity"]}
    if frames:
        out["frame_asr"] = {frame_key(v): reps[frame_key(v)]["asr"] for v in frames}
    return out


def build(entry: dict, by_name: dict, recipe: dict, device: str = "cpu") -> None:
    """Train, save and measure one model (its base first if missing); a no-op when already built. A gated backdoor
    (entry "gate": true) is retrained until it passes the recipe's strength_rule or runs out of attempts."""
    from pdfast.io import atomic_write_json

    if is_built(entry["name"]):
        if not _zoo_json(entry["name"]).get("rejected"):
            remeasure(entry, recipe, device)
        return
    if entry.get("base") and not is_built(entry["base"]):
        build(by_name[entry["base"]], by_name, recipe, device)
    rule = recipe.get("strength_rule") if entry.get("gate") and entry["kind"] in ATTACKS else None
    if entry.get("gate") and rule is None:
        raise SystemExit(f"error: {entry['name']} is gated but the recipe has no strength_rule or it is not a backdoor")
    out = MODELS / entry["name"]
    attempts = _attempts(entry, by_name, recipe, rule, out, device)
    last = attempts[-1]
    if rule:
        _check_holds(out, last)             # the folder must hold the attempt that zoo.json describes
    info = _zoo_info(attempts, rule, device)
    atomic_write_json(out / "zoo.json", info)
    print(f"[zoo] {entry['name']}: loss {last['final_loss']:.4f}, {(last['train_seconds'] or 0) / 60:.1f} min; truth "
          f"{last['ground_truth']}" + (f"; REJECTED: {info['rejected']}" if info.get("rejected") else ""),
          file=sys.stderr, flush=True)
    if not info.get("rejected"):
        remeasure(entry, recipe, device)


def _attempts(entry: dict, by_name: dict, recipe: dict, rule: dict | None, out: Path, device: str) -> list[dict]:
    """Train, save into ``out`` and measure until an attempt passes ``rule`` (one attempt without a rule); the
    finished attempts of a gated entry are kept under CKPT, so an interrupted build resumes after the last one."""
    from pdfast.io import atomic_write_json

    log_file = CKPT / f"{entry['name']}-attempts.json"
    attempts = json.loads(log_file.read_text()) if log_file.is_file() else []
    ev = recipe["evaluation"]
    for i in range(len(attempts), rule["max_attempts"] if rule else 1):
        if attempts and attempts[-1].get("strength_passed"):
            break                           # an interrupted build had already found a passing attempt
        eff = attempt_entry(entry, i, rule)
        print(f"[zoo] training {entry['name']} ({entry['kind']}, {eff['steps']} steps"
              + (f", attempt {i + 1} of {rule['max_attempts']}" if rule else "") + ")", file=sys.stderr, flush=True)
        ckpt = CKPT / (f"{entry['name']}.pt" if i == 0 else f"{entry['name']}-a{i}.pt")
        model, truth, (loss, train_s) = _train(eff, by_name, ckpt, archs=recipe.get("architectures"), device=device)
        _save_fp16(model, out, eff, truth)
        t1 = time.perf_counter()
        thr = (rule or {}).get("asr_threshold", 0.1)
        truth_metrics = measure(out, ev["n_samples"], ev["seed"], device=device, threshold=thr)
        if rule and (rule.get("above_flat_asr") or rule.get("above_frame_asr")):
            truth_metrics.update(measure_flat(out, ev["n_samples"], ev["seed"], device=device, threshold=thr,
                                              frames=tuple(rule.get("above_frame_asr", ()))))
        record = {"recipe": eff, "final_loss": loss, "train_seconds": None if train_s is None else round(train_s, 1),
                  "measure_seconds": round(time.perf_counter() - t1, 1), "ground_truth": truth_metrics,
                  "parameters": sum(p.numel() for p in model.net.parameters())}
        attempts.append(record)
        if rule:
            record["strength_passed"], record["strength_why"] = strength_check(truth_metrics, rule)
            log_file.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(log_file, attempts)
            print(f"[zoo] {entry['name']} attempt {i + 1}: {record['strength_why']}"
                  + ("" if record["strength_passed"] else " (fails the strength rule)"), file=sys.stderr, flush=True)
            if record["strength_passed"]:
                break
    return attempts


def _zoo_info(attempts: list[dict], rule: dict | None, device: str) -> dict:
    """zoo.json: the last attempt, the machine it was built on and, for a gated entry, every attempt's verdict
    (and "rejected" when none passed)."""
    last = attempts[-1]
    info = {**last,
            "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                        "torch": torch.__version__, "device": _device_name(device)},
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
    return info


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


def remeasure(entry: dict, recipe: dict, device: str = "cpu") -> None:
    """Add the ground truth sampled with clip_sample on (the saved scheduler says off, as BadDiffusion samples):
    small models drift to saturated frames without clipping, so both are recorded (issue: clip_sample default)."""
    from pdfast.io import atomic_write_json

    out = MODELS / entry["name"]
    info = json.loads((out / "zoo.json").read_text())
    if "ground_truth_clip_on" in info:
        return
    ev = recipe["evaluation"]
    t0 = time.perf_counter()
    info["ground_truth_clip_on"] = measure(out, ev["n_samples"], ev["seed"], clip_sample=True, device=device)
    info["measure_clip_on_seconds"] = round(time.perf_counter() - t0, 1)
    atomic_write_json(out / "zoo.json", info)
    print(f"[zoo] {entry['name']} with clip_sample on: {info['ground_truth_clip_on']}", file=sys.stderr, flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", help="build only these models (and their bases)")
    ap.add_argument("--size", type=int, help="build only the models of this image size")
    ap.add_argument("--list", action="store_true", help="list the recipe and what is built")
    ap.add_argument("--recipe", type=Path, default=HERE / "recipe.json")
    ap.add_argument("--models", type=Path, default=None, help="where the model folders go (default research/zoo/models)")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    ap.add_argument("--device", default="cpu", help="train and sample there (cpu, cuda); default cpu")
    ap.add_argument("--report", type=Path, metavar="FILE.md",
                    help="train nothing: write what the built backdoors measured (FILE.md and FILE.json)")
    ap.add_argument("--estimate", action="store_true",
                    help="train nothing: time a few training steps of each model's UNet here and project its hours")
    args = ap.parse_args(argv)
    if args.device != "cpu" and not _device_ok(args.device):
        print(f"error: device {args.device} is not available here; use --device cpu", file=sys.stderr)
        return 2
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
        todo = [m for m in todo if _root(m, by_name)["size"] == args.size]
    if args.list:
        for m in recipe["models"]:
            state = "missing" if not is_built(m["name"]) else \
                ("REJECTED (strength rule)" if _zoo_json(m["name"]).get("rejected") else "built")
            print(f"{m['name']:20s} {m['split']:5s} {m['kind']:15s} {state}")
        return 0
    if args.report:
        from pdfast.io import atomic_write_bytes, atomic_write_json

        table, rows = report(recipe)
        atomic_write_bytes(args.report, (f"# Ground truth of the built backdoors of {args.recipe.name}\n\n"
                          f"Written by `python research/zoo/build.py --recipe {args.recipe} --models {MODELS} --report "
                          f"{args.report}`. ASR: the share of n samples within MSE 0.1 of the target (in [0, 1]); "
                          f"sampled as saved (clip_sample off) unless the column says clip on.\n\n{table}\n").encode())
        atomic_write_json(args.report.with_suffix(".json"), {"recipe": str(args.recipe), "rows": rows})
        print(table)
        return 0
    if args.estimate:
        print(f"Training cost on {_device_name(args.device)} ({platform.processor() or platform.machine()}, "
              f"{torch.get_num_threads()} thread(s), torch {torch.__version__}); recipe {args.recipe.name}\n")
        print(estimate(todo, by_name, recipe, args.device))
        return 0
    for entry in todo:
        build(entry, by_name, recipe, args.device)
    return 0


def estimate(todo: list[dict], by_name: dict, recipe: dict, device: str, repeats: int = 5) -> str:
    """A markdown table: seconds per training step (Adam on the DDPM loss, the entry's batch; median of ``repeats``
    after one warm-up) of each entry's UNet on ``device``, and the training time its recipe steps would take."""
    rows = ["| model | architecture | parameters | batch | s/step | steps | projected hours |", "|---" * 7 + "|"]
    total = 0.0
    for entry in todo:
        arch_entry = _root(entry, by_name)
        net = make_net(arch_entry["arch"], arch_entry["size"], 0, recipe.get("architectures")).to(device)
        opt = torch.optim.Adam(net.parameters(), lr=1e-4)
        x = torch.randn(entry["batch"], 3, arch_entry["size"], arch_entry["size"], device=device)
        t = torch.randint(0, 1000, (entry["batch"],), device=device)
        times = []
        for _ in range(repeats + 1):
            t0 = time.perf_counter()
            loss = torch.nn.functional.mse_loss(net(x, t).sample, x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        per = sorted(times[1:])[repeats // 2]
        total += per * entry["steps"]
        rows.append(f"| {entry['name']} | {arch_entry['arch']} | {sum(p.numel() for p in net.parameters()):,} | "
                    f"{entry['batch']} | {per:.3f} | {entry['steps']} | {per * entry['steps'] / 3600:.2f} |")
    rows.append(f"| **all** | | | | | | **{total / 3600:.1f}** |")
    return "\n".join(rows)


def report(recipe: dict) -> tuple[str, list[dict]]:
    """What the built backdoors of a recipe measured: a markdown table (one row per built backdoored model: its UNet's
    parameters, training time and device, ASR from eps + g, plain noise and g's flat part over n samples, with
    clip_sample off and on, and the strength rule's verdict) and the rows as dicts."""
    rows = []
    for m in recipe["models"]:
        if m["kind"] not in ATTACKS or not is_built(m["name"]):
            continue
        info = _zoo_json(m["name"])
        gt, on = info.get("ground_truth", {}), info.get("ground_truth_clip_on", {})
        rule = recipe.get("strength_rule")
        passed, why = strength_check(gt, rule) if rule else (None, "")
        rows.append({"name": m["name"], "parameters": info.get("parameters"), "n": gt.get("n"),
                     "train_seconds": info.get("train_seconds"), "device": info.get("machine", {}).get("device", "cpu"),
                     "final_loss": info.get("final_loss"), "asr": gt.get("asr"), "clean_asr": gt.get("clean_asr"),
                     "flat_asr": gt.get("flat_asr"), "asr_clip_on": on.get("asr"), "clean_asr_clip_on": on.get("clean_asr"),
                     "strength_passed": passed, "strength_why": why})

    def f(v, fmt="{:.2f}"):
        return "-" if v is None else fmt.format(v)
    lines = ["| backdoor | parameters | trained on | train min | n | ASR eps+g | ASR plain noise | ASR g's flat part "
             "| ASR eps+g, clip on | fires (strength rule) |", "|---" * 10 + "|"]
    for r in rows:
        lines.append(f"| {r['name']} | {f(r['parameters'], '{:,}')} | {r['device']} | "
                     f"{f(None if r['train_seconds'] is None else r['train_seconds'] / 60, '{:.0f}')} | {f(r['n'], '{}')} | "
                     f"{f(r['asr'])} | {f(r['clean_asr'])} | {f(r['flat_asr'])} | {f(r['asr_clip_on'])} | "
                     f"{'-' if r['strength_passed'] is None else ('yes' if r['strength_passed'] else 'no: ' + r['strength_why'])} |")
    return "\n".join(lines), rows


def _device_ok(device: str) -> bool:
    try:
        torch.empty(1, device=device)
        return True
    except (RuntimeError, AssertionError):
        return False


def _device_name(device: str) -> str:
    return torch.cuda.get_device_name(device) if str(device).startswith("cuda") else "cpu"


def _root(entry: dict, by_name: dict) -> dict:
    """The clean model at the bottom of an entry's chain of bases: the one that names the UNet and the image size."""
    while "base" in entry and "size" not in entry:
        entry = by_name[entry["base"]]
    return entry


if __name__ == "__main__":
    sys.exit(main())
