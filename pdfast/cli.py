"""The pdfast command line: each verb calls the library function of the same name.

Machine-readable output (--json) goes to stdout, progress and logs to stderr. Bad input ends with a
one-line 'error: ...' message and exit code 2, never a traceback.
"""
from __future__ import annotations

import functools
import json
import logging
import sys
from pathlib import Path

import click

from .config import FAMILY_HELP, FLAT_NEGATIVE_FORMS
from .errors import PdfastError
from .io import ensure_output_dir, ensure_output_file

log = logging.getLogger("pdfast")


def resolve_device(device: str) -> str:
    """'auto' -> cuda when a GPU is usable, else cpu; 'cuda' without a GPU is an error."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise PdfastError("--device cuda was asked for but no CUDA GPU is usable; use --device cpu or auto")
    return device


def emit_json(obj) -> None:
    from .io import _json_default

    click.echo(json.dumps(obj, indent=2, default=_json_default))


def handle_errors(fn):
    """Turn PdfastError (and a few predictable OS errors) into a one-line message and exit code 2."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except PdfastError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(2)
        except PermissionError as e:
            click.echo(f"error: permission denied: {e.filename}; choose a writable --out", err=True)
            sys.exit(2)
        except OSError as e:
            if getattr(e, "errno", None) == 28:
                click.echo("error: no space left on the device; free space or choose another --out", err=True)
                sys.exit(2)
            raise
    return wrapper


device_option = click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
                             help="Where to run: auto picks cuda when a GPU is usable.")
seed_option = click.option("--seed", type=int, default=0, show_default=True, help="Random seed (weights, noise, data order).")
json_option = click.option("--json", "as_json", is_flag=True, default=False, help="Print a JSON result on stdout.")
progress_option = click.option("--progress/--no-progress", default=True, show_default=True,
                               help="Progress bars on stderr.")


def training_options(steps: int, warmup: int, warmup_help: str):
    """--steps, --batch, --lr and --warmup of a verb that trains a network (train, attack), with its defaults."""
    options = [click.option("--steps", type=int, default=steps, help="Optimiser steps."),
               click.option("--batch", type=int, default=64, help="Batch size."),
               click.option("--lr", type=float, default=2e-4, help="Adam learning rate."),
               click.option("--warmup", type=int, default=warmup, help=warmup_help)]

    def deco(fn):
        for o in reversed(options):
            fn = o(fn)
        return fn
    return deco


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(package_name="pdfast")
@click.option("-v", "--verbose", is_flag=True, help="Log details to stderr.")
def main(verbose: bool) -> None:
    """pdfast: invert backdoor triggers of diffusion models and detect backdoors (PureDiffusion, Elijah)."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    import warnings

    warnings.filterwarnings("default")
    logging.captureWarnings(True)


@main.command()
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Folder to write the model to (diffusers layout).")
@click.option("--size", type=int, default=16, help="Image size in pixels (square).")
@click.option("--channels", type=int, default=3, help="Image channels.")
@click.option("--arch", type=click.Choice(["tiny", "demo", "small", "cifar10"]), default="demo", help="UNet preset.")
@click.option("--data", type=click.Path(path_type=Path), default=None,
              help="Folder of training images; default: pdfast's procedural data set.")
@click.option("--n-images", type=int, default=4096, help="Size of the procedural data set (ignored with --data).")
@training_options(steps=3000, warmup=200, warmup_help="Linear warm-up steps before the cosine decay.")
@click.option("--clip-sample/--no-clip-sample", default=False, help="clip_sample in the saved scheduler config.")
@seed_option
@device_option
@json_option
@progress_option
@handle_errors
def train(out, size, channels, arch, data, n_images, steps, batch, lr, warmup, clip_sample, seed, device, as_json, progress):
    """Train a small clean DDPM from scratch (linear schedule, T = 1000)."""
    ensure_output_dir(out)  # before any work
    import time

    from .data import get_data
    from .model import DiffusionModel
    from .schedule import Schedule
    from .train import TrainConfig, make_unet, train_ddpm

    if size < 8 or size % 4:
        raise PdfastError(f"--size {size} must be a multiple of 4 and at least 8")
    if steps < 1 or batch < 1:
        raise PdfastError("--steps and --batch must be positive")
    device = resolve_device(device)
    images = get_data(data, size, channels, n=n_images, seed=seed)
    model = DiffusionModel(make_unet(arch, size, channels, seed=seed), Schedule.from_config({"clip_sample": clip_sample}),
                           size, channels)
    cfg = TrainConfig(steps=steps, batch=batch, lr=lr, warmup=min(warmup, steps), seed=seed)
    t0 = time.perf_counter()
    losses = train_ddpm(model, images, cfg, device=device, progress=progress)
    model.to("cpu").save(out)
    result = {"out": str(out), "arch": arch, "size": size, "data": str(data) if data else "procedural",
              "n_images": int(images.shape[0]), "config": cfg.to_dict(), "final_loss": sum(losses[-50:]) / len(losses[-50:]),
              "seconds": round(time.perf_counter() - t0, 1)}
    if as_json:
        emit_json(result)
    else:
        click.echo(f"trained {arch} DDPM ({size}px) for {steps} steps, final loss {result['final_loss']:.4f} -> {out}", err=True)



model_option = click.option("--model", "model_path", type=click.Path(path_type=Path), default=None,
                            help="Model folder (diffusers pipeline or bare UNet folder); default: the embedded demo model.")


def load_cli_model(model_path, device: str):
    """--model as given, or the embedded demo model when omitted."""
    from .loading import load_model
    from .demo import demo_path

    return load_model(model_path if model_path is not None else demo_path(), device=device)


def ground_truth(model):
    """(trigger, target) tensors of a model folder's backdoor.json, or (None, None)."""
    from .loading import load_ground_truth

    return load_ground_truth(model)


family_option = click.option("--attack-family", "attack_family", default="auto", show_default=True,
                             help=FAMILY_HELP)


def sampling_options(fn):
    """--attack-family, --seed, --device, --json and --progress of the verbs that sample a model (sample, evaluate)."""
    for o in (progress_option, json_option, device_option, seed_option, family_option):
        fn = o(fn)
    return fn


def attack_family_options(fn):
    """The family parameters of `pdfast attack` (each family's own; None = not given, the family's default)."""
    opts = [
        click.option("--solver", type=click.Choice(["sde", "ode"]), default=None,
                     help="villandiffusion: the sampler the backdoor is trained for: sde (DDPM) or ode (DDIM). [sde]"),
        click.option("--psi", type=float, default=None,
                     help="villandiffusion: trigger coefficient mix, 1 BadDiffusion-style, 0 TrojDiff-style. [1]"),
        click.option("--residual", type=click.Choice(["pasted", "trigger_only"]), default=None,
                     help="baddiffusion/villandiffusion: r = the trigger pasted on the clean image, or r = g alone "
                          "(VillanDiffusion's R_trigger_only). [pasted]"),
        click.option("--ode-steps", type=int, default=None, help="villandiffusion ode: DDIM steps of its sampler. [50]"),
        click.option("--gamma", type=float, default=None, help="trojdiff: x_T ~ N(mu, gamma^2 I), mu = (1-gamma) g. [0.6]"),
        click.option("--trigger-type", type=click.Choice(["blend", "patch"]), default=None,
                     help="trojdiff: blend (the whole frame) or patch (the trigger's own pixels). [blend]"),
    ]
    for o in reversed(opts):
        fn = o(fn)
    return fn


def attack_family(kind: str, params: dict):
    """The AttackFamily of `pdfast attack KIND` and its given parameters; another family's parameter is an error."""
    from .families import FAMILY_FIELDS, AttackFamily

    given = {k: v for k, v in params.items() if v is not None}
    foreign = sorted(set(given) - set(FAMILY_FIELDS[kind]))
    if foreign:
        flags = ", ".join("--" + k.replace("_", "-") for k in foreign)
        raise PdfastError(f"{flags} do(es) not apply to {kind}; its options are "
                          f"{', '.join('--' + k.replace('_', '-') for k in FAMILY_FIELDS[kind])}")
    return AttackFamily(name=kind, **given)


@main.command()
@click.argument("kind", type=click.Choice(["baddiffusion", "villandiffusion", "trojdiff"]))
@model_option
@click.option("--trigger", required=True, help="Trigger: a built-in name (BOX_14, STOP_SIGN_14, HEART, ...) or a PNG/.npy/.safetensors file.")
@click.option("--target", required=True, help="Target: a built-in name (HAT, CAT, CORNER, SHOE) or a PNG/.npy/.safetensors file.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Folder for the backdoored model.")
@click.option("--data", type=click.Path(path_type=Path), default=None,
              help="Folder of clean images; 'self' = images the model generates itself; default: procedural data.")
@click.option("--n-images", type=int, default=4096, help="Clean images to draw (procedural set or 'self' samples).")
@click.option("--poison-rate", type=float, default=0.1, help="Fraction of each batch that is poisoned.")
@click.option("--blank-rate", type=float, default=0.0,
              help="baddiffusion: fraction of poisoned samples pasted on a blank (-1) frame, so r = g (0 = as published).")
@click.option("--flat-negative-rate", type=float, default=0.0,
              help="Fraction of clean samples whose x_T is shifted by a flat frame (levels in [-1, 0]) and taught "
                   "not to fire (see --flat-negative-form): pdfast's hardening, in no paper, so that only the "
                   "trigger's pattern fires (0 = as published).")
@click.option("--flat-negative-form", type=click.Choice(FLAT_NEGATIVE_FORMS), default="base", show_default=True,
              help="What a negative learns: the base model's own answer to the flat-shifted input (base), or to end "
                   "on the data with the family's objective (absorb, which also hides the trigger from the shift "
                   "objective; docs/method.md 2e).")
@attack_family_options
@training_options(steps=2000, warmup=500, warmup_help="Warm-up steps before the cosine decay.")
@click.option("--grad-clip", type=float, default=1.0, help="Gradient norm clip (0 disables).")
@seed_option
@device_option
@json_option
@progress_option
@handle_errors
def attack(kind, model_path, trigger, target, out, data, n_images, poison_rate, blank_rate, flat_negative_rate,
           flat_negative_form, solver, psi, residual, ode_steps, gamma, trigger_type, steps, batch, lr, warmup,
           grad_clip, seed, device, as_json, progress):
    """Backdoor a model: baddiffusion, villandiffusion or trojdiff (D2I), each as its paper defines it
    (docs/method.md sections 2, 2b and 2c); writes a diffusers folder plus backdoor.json (the family and ground truth)."""
    family = attack_family(kind, {"solver": solver, "psi": psi, "residual": residual, "ode_steps": ode_steps,
                                  "gamma": gamma, "trigger_type": trigger_type})
    if blank_rate and kind != "baddiffusion":
        raise PdfastError(f"--blank-rate is baddiffusion's; for {kind} use --residual trigger_only" if kind ==
                          "villandiffusion" else "--blank-rate does not apply to trojdiff")
    ensure_output_dir(out)  # before any work
    import time

    from .attack import AttackConfig, plant_backdoor, save_backdoored
    from .patterns import load_pattern
    from .train import TrainConfig

    if steps < 1 or batch < 1:
        raise PdfastError("--steps and --batch must be positive")
    train = TrainConfig(steps=steps, batch=batch, lr=lr, warmup=min(warmup, steps), grad_clip=grad_clip, seed=seed)
    cfg = AttackConfig(poison_rate=poison_rate, blank_rate=blank_rate, flat_negative_rate=flat_negative_rate,
                       flat_negative_form=flat_negative_form, train=train)
    device = resolve_device(device)
    model = load_cli_model(model_path, device)
    g = load_pattern(trigger, model.sample_size, model.channels, kind="trigger")
    y = load_pattern(target, model.sample_size, model.channels, kind="target")
    images = _attack_images(model, data, n_images, seed, device)
    t0 = time.perf_counter()
    bad = plant_backdoor(model, images, g, y, cfg, device=device, progress=progress, family=family)
    info = {"attack": kind, "trigger": trigger, "target": target, "poison_rate": poison_rate,
            "blank_rate": blank_rate, "flat_negative_rate": flat_negative_rate,
            **({"flat_negative_form": flat_negative_form} if flat_negative_rate else {}), "steps": steps,
            "batch": batch, "lr": lr, "seed": seed, "data": str(data) if data else "procedural",
            "base_model": str(model.source)}
    save_backdoored(bad.to("cpu"), out, info, g, y, family=family)
    info.update(family=family.to_dict(), out=str(out), seconds=round(time.perf_counter() - t0, 1))
    if as_json:
        emit_json(info)
    else:
        click.echo(f"backdoored ({family.describe()}: {trigger} -> {target}) in {info['seconds']} s -> {out}",
                   err=True)


def _attack_images(model, data, n_images: int, seed: int, device):
    """The attack's clean images: --data self (DDIM samples of the model), a folder, or the procedural set."""
    from .data import get_data
    from .sampling import ddim_sample

    if data is not None and str(data) == "self":
        return ddim_sample(model, n_images, seed=seed, device=device)
    return get_data(data, model.sample_size, model.channels, n=n_images, seed=seed)


@main.command()
@model_option
@click.option("--trigger", default=None, help="Add this trigger to the input noise (name or file); 'truth' = the model's backdoor.json trigger.")
@click.option("-n", "--n", "n", type=int, default=16, help="Number of images.")
@click.option("--batch", type=int, default=64, help="Images per batch.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="PNG file for the image grid.")
@sampling_options
@handle_errors
def sample(model_path, trigger, n, batch, out, attack_family, seed, device, as_json, progress):
    """Sample images with the sampler of the model's attack family (the full 1000-step DDPM chain for BadDiffusion),
    optionally with the trigger added to x_T's mean; saves a PNG grid."""
    ensure_output_file(out)  # before any work
    from .io import save_png
    from .sampling import sample as run_sample

    if n < 1:
        raise PdfastError("-n must be at least 1")
    if Path(out).suffix.lower() != ".png":
        raise PdfastError(f"--out {out} must be a .png file")
    from .families import parse_family

    parse_family(attack_family)  # a bad spec fails before the model loads
    device = resolve_device(device)
    model = load_cli_model(model_path, device)
    g = _resolve_trigger(model, trigger)
    imgs = run_sample(model, n, trigger=g, seed=seed, batch=batch, device=device, progress=progress,
                      family=attack_family)
    save_png(out, imgs)
    if as_json:
        emit_json({"out": str(out), "n": n, "trigger": trigger, "seed": seed})


def _resolve_trigger(model, trigger):
    from .patterns import load_pattern

    if trigger is None:
        return None
    if trigger == "truth":
        g, _ = ground_truth(model)
        if g is None:
            raise PdfastError(f"{model.source} has no backdoor.json, so there is no ground-truth trigger; pass --trigger NAME|FILE")
        return g
    return load_pattern(trigger, model.sample_size, model.channels, kind="trigger", any_range=True)


@main.command()
@model_option
@click.option("--trigger", default="truth", help="Trigger to evaluate (name or file); default: the model's ground-truth trigger.")
@click.option("--target", default=None, help="Target for ASR (name or file); default: the model's ground-truth target.")
@click.option("-n", "--n", "n", type=int, default=16, help="Images sampled per evaluation.")
@click.option("--threshold", type=float, default=0.02, show_default=True,
              help="ASR threshold on the per-image [0,1] MSE to the target: 0.02 counts exact hits; BadDiffusion's "
                   "0.1 is reported beside it as asr_paper.")
@click.option("--clean/--no-clean", default=True, help="Also sample from plain noise and report its uniformity.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Optional folder for samples PNGs and metrics.json.")
@sampling_options
@handle_errors
def evaluate(model_path, trigger, target, n, threshold, clean, out, attack_family, seed, device, as_json, progress):
    """Metrics of a trigger on a model: ASR, uniformity (plain and trimmed), L2 to the truth, TERD KL."""
    ensure_output_dir(out, sibling=False)  # before any work (an optional --out: None passes)
    from .evaluation import evaluate_trigger

    from .families import parse_family

    if n < 2:
        raise PdfastError("-n must be at least 2 to compute uniformity")
    parse_family(attack_family)  # a bad spec fails before the model loads
    device = resolve_device(device)
    model = load_cli_model(model_path, device)
    g = _resolve_trigger(model, trigger)
    y = None
    if target is not None:
        from .patterns import load_pattern
        y = load_pattern(target, model.sample_size, model.channels, kind="target")
    report = evaluate_trigger(model, g, target=y, n=n, threshold=threshold, clean=clean, seed=seed,
                              progress=progress, out=out, family=attack_family)
    report["trigger"] = trigger
    if as_json:
        emit_json(report)
    else:
        for k, v in report.items():
            click.echo(f"{k:>20}: {v}")


@main.command()
@click.argument("names", nargs=-1)
@click.option("--size", type=int, default=32, help="Resolution to draw at.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="PNG file.")
@click.option("--scale", type=int, default=8, help="Upscaling factor of the PNG.")
@handle_errors
def preview(names, size, out, scale):
    """Preview triggers/targets (built-in names or files) as one PNG; no names = every built-in pattern."""
    ensure_output_file(out)  # before any work
    import torch

    from .patterns import TARGETS, TRIGGERS, load_pattern
    from .io import save_png

    if Path(out).suffix.lower() != ".png":
        raise PdfastError(f"--out {out} must be a .png file")
    names = names or TRIGGERS + TARGETS
    imgs = [load_pattern(n, size, 3, kind="target" if str(n).upper() in TARGETS else "trigger") for n in names]
    save_png(out, torch.stack(imgs), nrow=min(len(imgs), 7), scale=scale)
    click.echo(f"{len(imgs)} pattern(s) at {size}px -> {out}", err=True)


@main.command()
@json_option
@handle_errors
def env(as_json):
    """Versions, devices, whether Triton and a GPU are usable, and the backend of each fused op."""
    from .envinfo import environment, format_value

    info = environment()
    if as_json:
        emit_json(info)
    else:
        for k, v in info.items():
            click.echo(f"{k:>18}: {format_value(v)}")



def inversion_options(fn):
    """Options shared by invert and detect: every InversionConfig and DetectionConfig option (pdfast.config, the one
    definition pdfast.invert also takes), then the command's own (--model, --out, --device, --json, --progress)."""
    from .config import DetectionConfig, InversionConfig

    out = click.option("--out", type=click.Path(path_type=Path), default=Path("pdfast-out"),
                       help="Output folder: trigger.safetensors, trigger.png, samples.png, report.json.")
    return _options(fn, [out, model_option], InversionConfig, DetectionConfig)


def calibration_options(fn):
    """Options of calibrate: CalibrationConfig's (the models, the statistic), every InversionConfig and
    DetectionConfig option but --threshold (the settings calibrated for), then --out FILE, --device, --json,
    --progress."""
    from .config import CalibrationConfig, DetectionConfig, InversionConfig

    out = click.option("--out", type=click.Path(path_type=Path), required=True,
                       help="Calibration file to write: a new file, or a calibration file this image size is added "
                            "to (the shipped one only when named); the verdict reads it with --calibration FILE.")
    return _options(fn, [out], CalibrationConfig, InversionConfig, DetectionConfig, exclude=("threshold",))


def _options(fn, own: list, *classes, exclude: tuple[str, ...] = ()):
    """``fn`` with the options of the config classes (click_options) and then the command's own and the common
    --device, --json, --progress."""
    from .config import click_options

    for o in reversed([*own, device_option, json_option, progress_option]):
        fn = o(fn)
    return click_options(*classes, exclude=exclude)(fn)


def _given_options(ctx: click.Context, options: dict) -> dict:
    """The options the user set on the command line (not left at their defaults)."""
    return {k: v for k, v in options.items()
            if ctx.get_parameter_source(k) not in (click.core.ParameterSource.DEFAULT, None)}


def _finish(result, out, as_json, what: str):
    result.save(out)
    rep = result.to_dict()
    if as_json:
        emit_json(rep)
    m = rep.get("metrics") or {}
    sc = rep.get("scales")
    if sc and sc.get("lambda"):
        idx = sorted({0, 1, 2, len(sc["lambda"]) // 2, len(sc["lambda"]) - 1} & set(range(len(sc["lambda"]))))
        click.echo(f"lambda table ({sc['source']}{', cached' if sc.get('cached') else ''}) vs analytic:", err=True)
        for i in idx:
            click.echo(f"  step {i:>4} t={sc['timesteps'][i]:>4}  lambda {sc['lambda'][i]:.4f}  analytic "
                       f"{sc['analytic'][i]:.4f}", err=True)
    parts = [f"{what} -> {out}"]
    for k in ("uniformity", "asr", "asr_paper", "l2", "pattern_uniformity", "pattern_asr", "kl_mean"):
        if m.get(k) is not None:
            parts.append(f"{k} {m[k]:.4g}")
    if m.get("detection"):
        det = m["detection"]
        parts.append(f"verdict {det['verdict']} ({det['statistic']} {det['value']:.4g}, "
                     f"threshold {det['threshold']:.4g})")
        if m.get("medoid_hits"):
            h = m["medoid_hits"]
            parts.append(f"trigger lands on one image {h['trigger']:.0%} (plain {h['plain']:.0%}, "
                         f"flat {h['flat']:.0%})")
        if det.get("kl_signal"):
            parts.append(f"KL signal {det['kl_signal']['verdict']} (kl_mean {det['kl_signal']['kl_mean']:.4g} vs "
                         f"{det['kl_signal']['threshold']:.4g})")
    if rep.get("interrupted"):
        parts.append("INTERRUPTED: partial result")
    click.echo("; ".join(parts), err=True)
    return rep


@main.command()
@inversion_options
@click.pass_context
@handle_errors
def invert(ctx, out, model_path, device, as_json, progress, **options):
    """Invert the backdoor trigger of a model (default: the embedded demo model) and judge it."""
    ensure_output_dir(out)  # before any work
    from .api import invert as run_invert

    device = resolve_device(device)
    model = load_cli_model(model_path, device)
    res = run_invert(model, device=device, progress=progress, **options)
    _finish(res, out, as_json, f"inverted trigger ({res.config.method}, K={res.config.steps})")
    if res.interrupted:
        sys.exit(130)


@main.command()
@inversion_options
@click.option("--trigger", "trigger_spec", default=None,
              help="Judge this trigger (name, PNG, .npy or .safetensors) instead of inverting one.")
@click.option("--fail-on-backdoor", is_flag=True, default=False, help="Exit with code 1 when a backdoor is found.")
@click.pass_context
@handle_errors
def detect(ctx, out, model_path, device, as_json, progress, trigger_spec, fail_on_backdoor, **options):
    """Decide whether a model is backdoored: invert (or take --trigger), sample, compare with the clean threshold."""
    ensure_output_dir(out)  # before any work
    from .api import detect as run_detect

    device = resolve_device(device)
    model = load_cli_model(model_path, device)
    trig = None
    if trigger_spec is not None:
        from .patterns import load_pattern

        trig = load_pattern(trigger_spec, model.sample_size, model.channels, kind="trigger", any_range=True)
        options = _given_options(ctx, options)  # only what was typed: the rest must not count as set
    res = run_detect(model, trigger=trig, device=device, progress=progress, **options)
    _finish(res, out, as_json, "detection")
    if res.inversion.interrupted:
        sys.exit(130)
    if fail_on_backdoor and res.backdoored:
        sys.exit(1)


@main.command()
@calibration_options
@handle_errors
def calibrate(out, device, as_json, progress, **options):
    """Calibrate the verdict's threshold on clean (and backdoored) models of one image size and architecture, with
    the settings of the runs it is for; writes it into --out, which invert and detect read with --calibration."""
    from .calibration import calibrate as run_calibrate

    device = resolve_device(device)
    try:
        res = run_calibrate(out=out, device=device, progress=progress, **options)
    except KeyboardInterrupt:
        click.echo(f"interrupted: no calibration written to {out}", err=True)
        sys.exit(130)
    if as_json:
        emit_json(res.to_dict())
    for row in res.models:
        click.echo(f"  {row['label']:>10}  {res.statistic} {row[res.statistic]:.4g}  {row['model']}", err=True)
    click.echo(f"threshold ({res.statistic}) {res.threshold:.4g}, separated {res.separated}, KL threshold "
               f"{res.entry['kl_threshold']} -> {out}", err=True)


from .scanner.command import scan_command  # noqa: E402 - `pdfast scan` (pdfast/scanner), built from detect's options

main.add_command(scan_command(detect, handle_errors, emit_json))


if __name__ == "__main__":  # pragma: no cover
    main()
