"""What to run: the methods and their invert() options, the sampling settings, and the units of work (model, method,
K) in priority order, each with its identity in the cache."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .base import log, sha
from .zoo import ZooModel, model_hash, schedule_T

METHODS = ("truth", "elijah", "paper", "pdfast", "trivial")
# invert() options of each method (the rest: pdfast's defaults, pdfast/config.py)
METHOD_OPTIONS = {
    "elijah": {"method": "elijah"},
    "paper": {"method": "puredif", "preset": "paper"},
    "pdfast": {"method": "puredif"},
}
TRIVIAL = ("zeros", "flat-0.5", "flat-1", "init-U")
TRIVIAL_LABEL = {"zeros": "all 0", "flat-0.5": "all -0.5", "flat-1": "all -1", "init-U": "-U(0,1) seed 0"}
# --smoke: tiny inversions (for the end-to-end tests of this script, never for results)
SMOKE = {"epochs": 2, "batch": 4, "surrogate_steps": 2, "surrogate_batch": 4, "surrogate_n_images": 8,
         "surrogate_pool_steps": 2, "surrogate_calib_batch": 4}
SMOKE_REFINE = 2
EXTRA_SEED = 1          # seed of the samples beyond the verdict's


@dataclass
class Settings:
    """How every trigger is measured: n samples, the first verdict_n of them with the verdict's seed, the ASR
    threshold, smoke-sized inversions, invert() overrides (--set). Part of every unit's identity."""
    n: int
    verdict_n: int
    verdict_seed: int
    asr_threshold: float
    smoke: bool
    overrides: dict = field(default_factory=dict)

    def ident(self) -> dict:
        return {"n": self.n, "verdict_n": self.verdict_n, "verdict_seed": self.verdict_seed,
                "extra_seed": EXTRA_SEED, "asr_threshold": self.asr_threshold, "smoke": self.smoke,
                "overrides": self.overrides}

    def id(self) -> str:
        return sha(self.ident())[:8]


@dataclass
class Unit:
    """One (model, method, K): a trigger to obtain and measure."""
    model: ZooModel
    method: str                   # truth | elijah | paper | pdfast | trivial:<name>
    k: int | None
    options: dict | None          # invert() options (None: no inversion)
    ident: str = ""               # identity without the code version
    key: str = ""                 # identity + code version

    @property
    def label(self) -> str:
        return self.method + (f"-K{self.k}" if self.k else "")

    def stem(self) -> str:
        return f"{self.label.replace(':', '_')}-{self.ident[:12]}"


def invert_options(method: str, k: int, settings: Settings) -> dict:
    """The invert() options of a method at K (smoke-sized with --smoke, then --set's overrides)."""
    opts = dict(METHOD_OPTIONS[method])
    if method != "elijah":
        opts["steps"] = k
    if settings.smoke:
        opts.update(SMOKE)
        if method == "pdfast":
            opts["refine_epochs"] = SMOKE_REFINE
    opts.update(settings.overrides)
    return opts


def resolved_config(options: dict) -> dict:
    """The inversion configuration that options resolve to (presets applied): what a unit's identity records."""
    from pdfast.api import split_options
    from pdfast.config import InversionConfig, with_options

    inv, det = split_options(options)
    if det:
        raise SystemExit(f"error: {sorted(det)[0]} is a detection option; this script measures triggers itself")
    return with_options(InversionConfig(), inv).resolved().to_dict()


def plan(models: list[ZooModel], methods: list[str], ks: list[int], k1000: set[str], settings: Settings,
         cache: Path, code: str) -> list[Unit]:
    """The units in priority order: pdfast at each K over every model first (the detection evidence), then the
    truth, the paper's method, Elijah, the trivial triggers, and K = 1000 on the chosen models last."""
    units: list[Unit] = []
    T = {m.name: schedule_T(m) for m in models}

    def add(m, method, k, options):
        if k is not None and k > T[m.name]:
            log(f"skip {m.name} {method} K={k}: the model's schedule has T={T[m.name]}")
            return
        u = Unit(m, method, k, options)
        ident = {"model_hash": model_hash(m, cache), "method": method, "k": k, "settings": settings.ident(),
                 "config": resolved_config(options) if options is not None else None}
        u.ident = sha(ident)[:16]
        u.key = f"{u.ident}-{code}"
        units.append(u)

    for k in ks:
        if "pdfast" in methods:
            for m in models:
                add(m, "pdfast", k, invert_options("pdfast", k, settings))
    if "truth" in methods:
        for m in models:
            if m.backdoored:
                add(m, "truth", None, None)
    for k in ks:
        if "paper" in methods:
            for m in models:
                add(m, "paper", k, invert_options("paper", k, settings))
    if "elijah" in methods:
        for m in models:
            add(m, "elijah", None, invert_options("elijah", 1, settings))
    if "trivial" in methods:
        for t in TRIVIAL:
            for m in models:
                add(m, f"trivial:{t}", None, None)
    if 1000 not in ks:
        for method in ("pdfast", "paper"):
            if method in methods:
                for m in models:
                    if m.name in k1000:
                        add(m, method, 1000, invert_options(method, 1000, settings))
    return units
