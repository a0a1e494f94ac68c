"""Every option of an inversion, defined once: the dataclasses below make the library's keyword arguments, the CLI's
options (``click_options``) and their validation (``resolved``).

A field's metadata (``opt``) holds its help text and choices; nested configs (engine, surrogate) are flattened with
a prefix, so ``InversionConfig.surrogate.steps`` is ``surrogate_steps=`` in Python and ``--surrogate-steps`` on the
command line. ``from_options`` refuses unknown names instead of ignoring them.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Iterator

from .errors import PdfastError

# --attack-family's help, shared by the CLI verbs that take it (pdfast.families parses the value)
FAMILY_HELP = ("Backdoor family the model was attacked with: auto (its backdoor.json, else baddiffusion), "
               "baddiffusion, villandiffusion[:solver=ode|sde,psi=P] or trojdiff[:gamma=G,trigger=blend|patch]; "
               "sets the sampler, x_T and the analytic and surrogate scales.")

METHODS = ("puredif", "elijah")
# PureDiffusion presets, as data. "paper": what the paper describes (a fresh noise batch each iteration, eq. 17 as
# printed, no refinement); "pdfast": pdfast's additions (docs/method.md section 5). Explicit options win.
# "v0.1": pdfast 0.1's defaults, chosen on the demo model alone (kept to reproduce its results).
_V01 = {"batch": 40, "epochs": 30, "norm": "l1", "noise": "antithetic", "objective": "relative",
        "refine_epochs": 30, "refine_from": "pattern", "warm_epochs": 0, "polish_epochs": 0, "lr_schedule": "constant",
        "average": "none", "bounds": "none", "select": "last", "patch_starts": "none", "pair_epochs": 0}
# "pdfast": chosen on zoo v2's dev models (docs/method.md 5.6, research/results/defaults-v2-dev.md): the relative
# search with the L2 norm in the image box [-1, 1] (5.5), then 30 steps of eq. 17 from its pattern, and the stage
# whose trigger fires more is returned (select="firing").
# Since pdfast 0.4 it also searches from bright patches on a dark frame at the corners and the centre
# (patch_starts="grid", docs/method.md 5.9): from the uniform start the search ends on a small flat shift on
# trigger-only backdoors trained with flat negatives, from a patch over the trigger it finds the trigger.
PRESETS = {"pdfast": {**_V01, "norm": "l2", "bounds": "image", "select": "firing", "patch_starts": "grid"},
           "paper": {**_V01, "noise": "fresh", "objective": "absolute", "refine_epochs": 0},
           "v0.1": dict(_V01)}
# Per-family additions to the "pdfast" preset (docs/method.md 5.7), for options the user leaves unset. TrojDiff: its
# network answers the true mu at t = T with a mean output of 0 and other shifts with 0.3-0.5 of them, but from the
# uniform start the sampled K-step search stalls on a plateau; 300 Adam steps on t = T alone over one fixed noise
# batch (a deterministic objective) come near the truth (zoo v2 dev, research/results/family-response.md), and 300
# more on one fixed batch of antithetic pairs, where the true mu zeroes the objective, reach it (polish_epochs; on
# another CPU the warm stage alone ended at pattern cosine 0.83 and did not fire, research/results/trojdiff-warm.md).
# The patch grid (5.9) is a prior of BadDiffusion's trigger convention (a pattern on a -1 background); on the TrojDiff
# dev model one of its triggers collapsed the chains onto a non-target image and won the firing selection over the
# warm-started truth (docs/results.md), so TrojDiff models keep pdfast 0.3's inversion, with the polish after it.
# VillanDiffusion for ODE samplers (trigger-only residual): its network answers every shift alike over the first
# half of the DDIM chain, so no chain objective tried singles its trigger out (5.7); the poisoned-pair search
# (pdfast.pair, 5.11) from the patch grid finds it on the dev model, and its triggers join the firing selection.
FAMILY_PRESETS = {"trojdiff": {"warm_epochs": 300, "polish_epochs": 300, "noise": "fixed", "patch_starts": "none"},
                  "villandiffusion-ode": {"pair_epochs": 300}}
# Elijah as published (docs/method.md section 4); only the options a user gives change it.
ELIJAH = {**_V01, "batch": 100, "epochs": 100, "noise": "fixed", "objective": "absolute", "refine_epochs": 0}
NOISE_MODES = ("antithetic", "fresh", "fixed", "fixed-antithetic")
OBJECTIVES = ("relative", "absolute")
# What a flat-shift negative of `pdfast attack` is taught (pdfast.attack.AttackConfig, docs/method.md 2e); kept here,
# beside the other option choices, so the CLI can list them without importing torch
FLAT_NEGATIVE_FORMS = ("base", "absorb")


def opt(help: str, *, choices: tuple | None = None, cli: str | None = None, short: str | None = None,
        kind: type | None = None, multiple: bool = False) -> dict:
    """Field metadata: the option's help, its choices, its CLI name when not the field name, its value type, and
    whether the flag may be given several times (a tuple of values)."""
    return {"help": help, "choices": choices, "cli": cli, "short": short, "kind": kind, "multiple": multiple}


def unset(help: str, **meta) -> Any:
    """A field whose default, None, means "the method's or the preset's own" (filled by InversionConfig.resolved)."""
    return field(default=None, metadata=opt(help, **meta))


@dataclass(frozen=True)
class EngineConfig:
    """How the chain is executed and differentiated (pdfast.engine)."""

    name: str = field(default="fast", metadata=opt(
        "reference: eager fp32 autograd; fast: checkpointed, compiled and bf16 on GPU.", choices=("fast", "reference"),
        cli="engine"))
    dtype: str = field(default="auto", metadata=opt(
        "Network precision of the fast engine: auto (bf16 weights on CUDA, fp32 on CPU).",
        choices=("auto", "float32", "bfloat16", "bf16-autocast")))
    compile: str = field(default="auto", metadata=opt(
        "torch.compile the network in the fast engine: auto (on CUDA only), on, off.", choices=("auto", "on", "off")))
    memory_budget_gib: float | None = field(default=None, metadata=opt(
        "GiB for stored chain states and kept activations (fast engine); 0 recomputes every step; default: 80% of "
        "free GPU memory, half the free RAM on CPU.", kind=float))
    cuda_graphs: str = field(default="auto", metadata=opt(
        "CUDA graphs for the network call and the backward step (fast engine): auto (on CUDA), on, off.",
        choices=("auto", "on", "off")))

    def arithmetic(self, on_cuda: bool) -> tuple[str, bool]:
        """(network precision, compiled) this engine runs with on a CUDA or a CPU device: "auto" resolved as the fast
        engine resolves it (bf16 weights and torch.compile on CUDA, fp32 eager on CPU); the reference is fp32 eager.
        What a surrogate table's cache key records (pdfast.scales)."""
        if self.name == "reference":
            return "float32", False
        dtype = ("bfloat16" if on_cuda else "float32") if self.dtype == "auto" else self.dtype
        return dtype, on_cuda if self.compile == "auto" else self.compile == "on"

    def engine_options(self) -> dict:
        """Keyword options for make_engine; the reference engine refuses any that differ from the defaults."""
        if self.name == "reference":
            changed = [f.name for f in fields(self) if f.name != "name" and getattr(self, f.name) != f.default]
            if changed:
                raise PdfastError(f"--{changed[0].replace('_', '-')} applies to the fast engine only; drop it or use "
                                  "--engine fast")
            return {}
        tri = {"auto": "auto", "on": True, "off": False}
        budget = None if self.memory_budget_gib is None else self.memory_budget_gib * 2 ** 30
        if budget is not None and not budget >= 0:
            raise PdfastError(f"--memory-budget-gib {self.memory_budget_gib} must be 0 or more")
        return {"dtype": self.dtype, "compile": tri[self.compile], "memory_budget": budget,
                "cuda_graphs": tri[self.cuda_graphs]}


@dataclass(frozen=True)
class SurrogateConfig:
    """How the surrogate backdoor is planted in a copy of the suspect model (the defender's trigger and target)."""

    trigger: str = field(default="GLASSES", metadata=opt("Surrogate trigger (a built-in name or an image file)."))
    target: str = field(default="CORNER", metadata=opt("Surrogate target (a built-in name or an image file)."))
    steps: int = field(default=300, metadata=opt("Fine-tune steps of the surrogate backdoor."))
    batch: int = field(default=32, metadata=opt("Batch of the surrogate fine-tune."))
    lr: float = field(default=5e-4, metadata=opt("Learning rate of the surrogate fine-tune."))
    poison_rate: float = field(default=0.5, metadata=opt("Poisoned share of the surrogate's batches."))
    n_images: int = field(default=256, metadata=opt("Images the suspect model generates for the surrogate's data."))
    pool_steps: int = field(default=50, metadata=opt("DDIM steps for those images."))
    calib_batch: int = field(default=64, metadata=opt("Noise batch for the lambda estimate along the chain."))
    seed: int = field(default=1234, metadata=opt("Seed of the surrogate's data, fine-tune and estimate."))
    data: str | None = field(default=None, metadata=opt(
        "Folder of clean images for the surrogate backdoor; default: images the model generates itself.", cli="data"))

    def key(self) -> str:
        """Cache key: every setting, and for a data folder its file list with sizes and modification times."""
        d = asdict(self)
        if self.data:
            d["data"] = _folder_fingerprint(self.data)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]


def _folder_fingerprint(path: str) -> str:
    p = Path(path).resolve()
    if not p.is_dir():
        return str(p)
    h = hashlib.sha256(str(p).encode())
    for f in sorted(x for x in p.rglob("*") if x.is_file()):
        st = f.stat()
        h.update(f"{f.relative_to(p)}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()


@dataclass(frozen=True)
class InversionConfig:
    """Every knob of an inversion, defaults in one place. ``None`` means the method's own default (``resolved``)."""

    method: str = field(default="puredif", metadata=opt(
        "puredif: PureDiffusion multi-timestep inversion; elijah: the baseline (t = T only, lambda 0.5).",
        choices=METHODS))
    preset: str = field(default="pdfast", metadata=opt(
        "PureDiffusion settings: pdfast (antithetic noise, relative objective, L2 norm, trigger kept in [-1, 1], a "
        "refinement from its pattern, the stage that fires more kept; for TrojDiff models first 300 steps at t = T "
        "on one fixed noise batch, then 300 on a fixed batch of antithetic pairs; for trigger-only "
        "VillanDiffusion-ODE models the poisoned-pair search; chosen on zoo v2's dev models), "
        "paper (fresh noise, eq. 17 as printed, L1) or v0.1 (pdfast 0.1: L1, refinement from the pattern, "
        "unbounded); explicit options override it.", choices=tuple(PRESETS)))
    steps: int = field(default=10, metadata=opt("K: denoising steps the trigger is learned over.", short="-K"))
    scales: str = field(default="surrogate", metadata=opt(
        "lambda_t source: surrogate (calibrated on a surrogate-backdoored copy), analytic, or a JSON table file."))
    attack_family: str = field(default="auto", metadata=opt(FAMILY_HELP))
    epochs: int | None = unset("Adam steps (default: 30 puredif, 100 elijah).", kind=int)
    coarse_epochs: int = field(default=0, metadata=opt(
        "Adam steps of the search on the first min(K, 10) chain steps alone before its --epochs over all K (coarse "
        "to fine, pdfast's; 0: none)."))
    refine_epochs: int | None = unset("Then Adam steps on eq. 17 from the search result (default: 30; 0 in the paper "
                                      "preset).", kind=int)
    batch: int | None = unset("Noise batch (default: 40 puredif, 100 elijah).", kind=int)
    lr: float = field(default=0.1, metadata=opt("Adam learning rate on the trigger."))
    norm: str | None = unset("Loss norm (default: l2; l1 in the paper and v0.1 presets and Elijah).",
                             choices=("l1", "l2"))
    noise: str | None = unset("antithetic: fresh pairs (eps, -eps) whose mean is exactly 0; fresh: a new batch each "
                              "iteration; fixed: one batch drawn once; fixed-antithetic: one batch of pairs drawn "
                              "once (default: antithetic puredif, fixed elijah).",
                              choices=NOISE_MODES)
    init: str = field(default="uniform", metadata=opt("Trigger init: -U(0,1) (uniform) or zeros.",
                                                      choices=("uniform", "zeros")))
    objective: str | None = unset(
        "relative: ||mean eps_theta - lambda delta|| / n(delta), n = mean |delta| (l1) or mean delta^2 (l2), so "
        "shrinking delta to 0 does not win (default puredif); absolute: eq. 17 as printed (default elijah).",
        choices=OBJECTIVES)
    refine_from: str | None = unset("Where the refinement starts: the search result's pattern (its flat part "
                                    "removed) or the result itself.", choices=("pattern", "trigger"))
    warm_epochs: int | None = unset("Adam steps on the first chain step alone (t = T, a one-step warm start) before "
                                    "the K-step search.", kind=int)
    polish_epochs: int | None = unset("Then Adam steps at t = T on one fixed batch of antithetic pairs, from the warm "
                                      "stage's trigger; its trigger joins the --select firing candidates (pdfast's, "
                                      "for TrojDiff, whose true trigger zeroes this objective).", kind=int)
    pair_epochs: int | None = unset(
        "Adam steps of the poisoned-pair search (trigger and target together, docs/method.md 5.11) from each start of "
        "the patch grid; its triggers join the --select firing candidates (default: 300 for VillanDiffusion-ODE "
        "models in the pdfast preset, else 0).", kind=int)
    lr_schedule: str | None = unset("Learning rate over each stage: constant, or cosine (decays to 0 at the stage's "
                                    "end).", choices=("constant", "cosine"))
    average: str | None = unset("none: a stage returns its last iterate; tail: the mean of the iterates of its "
                                "second half.", choices=("none", "tail"))
    select: str | None = unset("Which stage's trigger is returned when there is a refinement: last (the refined one) "
                               "or firing (the one that fires more: its samples land on one image more often than "
                               "plain and flat-shifted samples of the same noises do, docs/method.md 5.6).",
                               choices=("last", "firing"))
    patch_starts: str | None = unset(
        "grid: the search also runs from a bright square on a -1 frame at each corner and the centre, over the "
        "first min(K, 10) chain steps, and --select firing chooses among all the stages' triggers (pdfast's global "
        "search, docs/method.md 5.9; default in the pdfast preset); none: only from --init.",
        choices=("none", "grid"))
    bounds: str | None = unset("image: the trigger is projected onto [-1, 1] (an image) after every step "
                               "(default); none: unconstrained (the paper, v0.1 and Elijah).", choices=("none", "image"))
    loss_steps: str = field(default="sampled", metadata=opt(
        "sampled: one step drawn from the first K per iteration (the paper); all: the mean over all K.",
        choices=("sampled", "all")))
    seed: int = field(default=0, metadata=opt("Seed of the initial trigger and the noise."))
    clip_sample: str = field(default="off", metadata=opt(
        "Clip the predicted x0 to [-1, 1] in every DDPM step (surrogate calibration, inversion and verdict): off "
        "(default, as the BadDiffusion and Elijah codes sample; measured on the zoo, docs/method.md 7), on, or auto "
        "(the model's scheduler config).", choices=("auto", "on", "off")))
    engine: EngineConfig = field(default_factory=EngineConfig)
    surrogate: SurrogateConfig = field(default_factory=SurrogateConfig)

    def resolved(self, family: str | None = None) -> "InversionConfig":
        """Fill every option left at None and validate: Elijah's published settings (docs/method.md section 4), or
        the PureDiffusion preset's (PRESETS; section 5: "paper" as printed, "pdfast" the defaults chosen on the
        zoo's dev models, "v0.1" pdfast 0.1's), with ``family``'s additions to "pdfast" (FAMILY_PRESETS; the
        model's attack family, known once it is loaded). Options given explicitly always win."""
        if self.method not in METHODS:
            raise PdfastError(f"unknown method '{self.method}'; use one of: {', '.join(METHODS)}")
        if self.method == "elijah":
            fill = ELIJAH
        elif self.preset not in PRESETS:
            raise PdfastError(f"unknown preset '{self.preset}'; use one of: {', '.join(PRESETS)}")
        else:
            fill = PRESETS[self.preset]
            if self.preset == "pdfast":
                fill = {**fill, **FAMILY_PRESETS.get(family, {})}
        c = replace(self, **{k: v for k, v in fill.items() if getattr(self, k) is None})
        if self.method == "elijah":
            c = replace(c, steps=1, scales="elijah-0.5", loss_steps="sampled")
        c.validate()
        return c

    def validate(self) -> None:
        """Check every value (choices from the field metadata, then the ranges); a PdfastError names the option."""
        check_choices(self)
        if self.steps < 1:
            raise PdfastError(f"--steps {self.steps} must be at least 1")
        if self.noise.endswith("antithetic") and self.batch % 2:
            raise PdfastError(f"--noise {self.noise} needs an even --batch (got {self.batch})")
        if self.polish_epochs and self.batch % 2:
            raise PdfastError(f"--polish-epochs draws antithetic pairs: it needs an even --batch (got {self.batch})")
        if self.batch < 1 or self.epochs < 1:
            raise PdfastError("--batch and --epochs must be positive")
        if self.patch_starts == "grid" and self.select != "firing":
            raise PdfastError("--patch-starts grid needs --select firing (the patches' triggers are chosen by "
                              "firing); add --select firing or use --patch-starts none")
        if self.coarse_epochs < 0:
            raise PdfastError(f"--coarse-epochs {self.coarse_epochs} must be 0 (no coarse stage) or more")
        if self.warm_epochs < 0:
            raise PdfastError(f"--warm-epochs {self.warm_epochs} must be 0 (no warm start) or more")
        if self.polish_epochs < 0:
            raise PdfastError(f"--polish-epochs {self.polish_epochs} must be 0 (no polish) or more")
        if self.pair_epochs < 0:
            raise PdfastError(f"--pair-epochs {self.pair_epochs} must be 0 (no pair search) or more")
        if self.pair_epochs and self.select != "firing":
            raise PdfastError("--pair-epochs needs --select firing (the pair search's triggers are chosen by "
                              "firing); add --select firing or use --pair-epochs 0")
        if self.refine_epochs < 0:
            raise PdfastError(f"--refine-epochs {self.refine_epochs} must be 0 (no refinement) or more")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise PdfastError(f"--lr {self.lr} must be a positive number")
        if self.surrogate.steps < 1:
            raise PdfastError("--surrogate-steps must be positive")
        from .families import parse_family

        parse_family(self.attack_family)  # a bad family spec fails here, with its one-line reason
        if self.scales not in ("surrogate", "analytic", "elijah-0.5") and not Path(self.scales).is_file():
            raise PdfastError(f"--scales {self.scales}: not surrogate, analytic or an existing JSON table file")

    def clip_for(self, configured: bool) -> bool:
        """--clip-sample for a model whose scheduler config says ``configured``: on, off, or auto (the config's)."""
        return configured if self.clip_sample == "auto" else self.clip_sample == "on"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_options(cls, base: "InversionConfig | None" = None, **options) -> "InversionConfig":
        """A config from flat option names (``steps=50, surrogate_steps=100, dtype="bfloat16"``) over ``base``."""
        return with_options(base or cls(), options)


@dataclass(frozen=True)
class DetectionConfig:
    """How the verdict is reached from a trigger (pdfast.detection)."""

    threshold: float | None = field(default=None, metadata=opt(
        "Pattern-uniformity threshold for the verdict; default: the calibration's.", kind=float))
    n_eval: int = field(default=64, metadata=opt(
        "Chains drawn for the verdict from each start (eps + trigger, eps, eps + its flat part, eps + its pattern), "
        "from the same noises."))
    eval_seed: int = field(default=0, metadata=opt("Seed of those samples."))
    eval_steps: int = field(default=100, metadata=opt(
        "Steps of the verdict's ancestral DDPM chain: fewer than the model's T respaces it evenly (the same "
        "marginals, docs/method.md section 7); T or more runs the full chain (the reference). TrojDiff's and the "
        "ODE samplers' chains are not respaced."))
    pattern_rms: float | None = field(default=None, metadata=opt(
        "Energy (rms) the verdict's pattern is scaled to; default: the calibration's (its own energy if none).",
        kind=float))
    calibration: str | None = field(default=None, metadata=opt(
        "Calibration file the verdict reads its threshold and pattern energy from (written by pdfast calibrate); "
        "default: the shipped clean-model calibration, pdfast/detection_calibration.json."))

    def validate(self) -> None:
        """Check the values; the calibration file itself is read and checked by pdfast.detection.calibration_for."""
        check_choices(self)
        if self.n_eval < 2:
            raise PdfastError(f"--n-eval {self.n_eval} must be at least 2 (uniformity compares pairs of samples)")
        if self.eval_steps < 2:
            raise PdfastError(f"--eval-steps {self.eval_steps} must be at least 2; give the chain's length (1000 for "
                              "the full DDPM chain)")


STATISTICS = ("trigger_miss", "pattern_uniformity", "pattern_uniformity_q25", "pattern_effect", "trigger_effect")


@dataclass(frozen=True)
class CalibrationConfig:
    """What a detection threshold is calibrated on (pdfast.calibration): clean and backdoored models of one image
    size and architecture, inverted and judged with the InversionConfig and DetectionConfig of the runs it is for."""

    clean: tuple = field(default=(), metadata=opt(
        "A clean model folder to calibrate on; give it once per model (at least one).", multiple=True))
    backdoored: tuple = field(default=(), metadata=opt(
        "A backdoored model folder to calibrate on (once per model): the threshold then sits between the two groups "
        "(geometric mean of the lowest clean value and the highest backdoored one below it) instead of at half the "
        "lowest clean one.", multiple=True))
    statistic: str = field(default="trigger_miss", metadata=opt(
        "The verdict's statistic (low = backdoored): trigger_miss (verdict v2: 1 minus how much more often the "
        "trigger's samples land on one image than plain and flat-shifted samples of the same noises do), the "
        "pattern's uniformity, its lower quartile, or the paired effect of the pattern or the trigger (their "
        "samples' uniformity over that of plain noise from the same noises).",
        choices=STATISTICS))


# ---------------------------------------------------------------- flattening
def flat_fields(cls, prefix: str = "") -> Iterator[tuple[str, tuple[str, ...], Any]]:
    """(flat option name, attribute path, field) of every leaf option of a config class."""
    for f in fields(cls):
        sub = _nested_type(f)
        if sub is not None:
            pre = "" if sub is EngineConfig else f"{f.name}_"
            for name, path, leaf in flat_fields(sub, prefix + pre):
                yield name, (f.name, *path), leaf
        else:
            yield f.metadata.get("cli") or prefix + f.name, (f.name,), f


def _nested_type(f):
    if f.default_factory is not MISSING:  # type: ignore[misc]
        value = f.default_factory()  # type: ignore[misc]
        if is_dataclass(value):
            return type(value)
    return None


def check_choices(config) -> None:
    """Every option with choices holds one of them (None: not set); a PdfastError names the option and the choices."""
    for name, path, f in flat_fields(type(config)):
        value = _get(config, path)
        choices = f.metadata.get("choices")
        if choices and value is not None and value not in choices:
            raise PdfastError(f"unknown {name.replace('_', ' ')} '{value}'; use one of: {', '.join(choices)}")


def _get(obj, path: tuple[str, ...]):
    for p in path:
        obj = getattr(obj, p)
    return obj


def with_options(config, options: dict):
    """``config`` with flat options applied; an unknown name is an error that lists the valid ones."""
    known = {name: path for name, path, _ in flat_fields(type(config))}
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise PdfastError(f"unknown option '{unknown[0]}'; valid options: {', '.join(sorted(known))}")
    for name, value in options.items():
        config = _set(config, known[name], value)
    return config


def _set(obj, path: tuple[str, ...], value):
    if len(path) == 1:
        return replace(obj, **{path[0]: value})
    return replace(obj, **{path[0]: _set(getattr(obj, path[0]), path[1:], value)})


def option_names(*classes) -> list[str]:
    """The flat option names of config classes, in definition order."""
    return [name for cls in classes for name, _, _ in flat_fields(cls)]


def click_options(*classes, exclude: tuple[str, ...] = ()):
    """A decorator adding one click option per leaf field of the config classes (name, default, type, choices, help
    all from the field), so the CLI and the library share one definition; ``exclude``: flat names left out."""
    def deco(fn):
        params = [_click_option(cls(), name, path, f) for cls in classes for name, path, f in flat_fields(cls)
                  if name not in exclude]
        for p in reversed(params):
            fn = p(fn)
        return fn
    return deco


def _click_option(defaults, name: str, path: tuple[str, ...], f):
    """The click option of one leaf field: --flag-name (and its short form), type or choices, default, help."""
    import click

    meta, default = f.metadata, _get(defaults, path)
    kind = meta.get("kind") or (str if default is None or meta.get("multiple") else type(default))
    ptype = click.Choice(list(meta["choices"])) if meta.get("choices") else kind
    decls = [f"--{name.replace('_', '-')}"] + ([meta["short"]] if meta.get("short") else [])
    if meta.get("multiple"):  # given once per value; none given is an empty tuple (no default to show)
        return click.option(*decls, name, type=ptype, multiple=True, help=meta.get("help", ""))
    return click.option(*decls, name, type=ptype, default=default, show_default=True, help=meta.get("help", ""))
