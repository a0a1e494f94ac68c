"""The library's entry points, ``pdfast.invert`` and ``pdfast.detect``: the inversion (pdfast.inversion, an
``Inversion``) joined with its verdict (pdfast.detection, a ``Verdict``) into one ``InversionResult``, which
pdfast.report writes. The CLI verbs of the same names call these, with options from the same definition
(pdfast.config): any InversionConfig or DetectionConfig option name is a keyword here and a flag there.

The call goes one way: api -> inversion (which makes its engine from the engine options) and api -> detection
(which makes its own from the same options); neither writes into the other's result.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch

from .config import DetectionConfig, InversionConfig, check_choices, option_names, with_options
from .detection import Verdict, calibration_for, judge
from .errors import PdfastError
from .inversion import Callback, Inversion, invert_trigger, prepared

log = logging.getLogger(__name__)


def split_options(options: dict) -> tuple[dict, dict]:
    """(inversion options, detection options) from flat keywords; unknown names are errors (with_options)."""
    det_names = set(option_names(DetectionConfig))
    return ({k: v for k, v in options.items() if k not in det_names},
            {k: v for k, v in options.items() if k in det_names})


def detection_config(det_opts: dict, sample_size: int | None = None) -> DetectionConfig:
    """The DetectionConfig of flat options, checked before any work: its values, and a named calibration file read
    (one 'error:' line when it is missing or not a calibration file)."""
    det = with_options(DetectionConfig(), det_opts)
    det.validate()
    if det.calibration is not None:
        calibration_for(det.calibration, sample_size)
    return det


@dataclass
class InversionResult:
    """What pdfast.invert returns: a trigger, the inversion that found it (None when pdfast.detect judged a trigger
    it was given) and its verdict (None with evaluate=False, or when interrupted before it). ``save`` and
    ``to_dict`` are pdfast.report's files and report.json (schema pdfast.report/1)."""

    trigger: torch.Tensor
    config: InversionConfig
    model_hash: str
    model_source: str
    inversion: Inversion | None = None
    verdict: Verdict | None = None
    timings: dict = field(default_factory=dict)
    interrupted: bool = False

    @property
    def given_trigger(self) -> bool:
        """True when the trigger was judged as given, not inverted."""
        return self.inversion is None

    @property
    def scales(self):
        return None if self.inversion is None else self.inversion.scales

    @property
    def losses(self) -> list[float]:
        return [] if self.inversion is None else self.inversion.losses

    @property
    def drawn_steps(self) -> list[int]:
        return [] if self.inversion is None else self.inversion.drawn_steps

    @property
    def engine(self) -> dict:
        """The report of the engine the trigger was inverted on (judged on, for a given trigger)."""
        if self.inversion is not None:
            return self.inversion.engine
        return self.verdict.engine if self.verdict is not None else {"engine": self.config.engine.name}

    @property
    def metrics(self) -> dict | None:
        """The verdict's metrics; ``metrics["detection"]`` is the verdict itself."""
        return None if self.verdict is None else self.verdict.metrics

    @property
    def samples(self) -> torch.Tensor | None:
        return None if self.verdict is None else self.verdict.samples

    @property
    def pattern_samples(self) -> torch.Tensor | None:
        return None if self.verdict is None else self.verdict.pattern_samples

    @property
    def ground_truth(self) -> torch.Tensor | None:
        return None if self.verdict is None else self.verdict.ground_truth

    def to_dict(self) -> dict:
        """report.json's content (pdfast.report.inversion_report)."""
        from .report import inversion_report

        return inversion_report(self)

    def save(self, out) -> "InversionResult":
        """Write trigger.safetensors, trigger.png, samples.png, pattern_samples.png and report.json into ``out``
        (atomically; pdfast.report.save_result)."""
        from .report import save_result

        save_result(self, out)
        return self


@dataclass
class DetectionResult:
    """What pdfast.detect returns: the verdict on one model, with the inversion (or given trigger) it rests on."""

    inversion: InversionResult

    @property
    def backdoored(self) -> bool:
        return self.verdict == "backdoored"

    @property
    def verdict(self) -> str:
        return self.inversion.metrics["detection"]["verdict"]

    @property
    def trigger(self) -> torch.Tensor:
        return self.inversion.trigger

    def to_dict(self) -> dict:
        return self.inversion.to_dict()

    def save(self, out) -> "DetectionResult":
        self.inversion.save(out)
        return self


def invert(model_or_path=None, *, config: InversionConfig | None = None, device=None,
           callback: Callback | None = None, evaluate: bool = True, progress: bool = False,
           start: torch.Tensor | None = None, **options) -> InversionResult:
    """Invert the trigger of a (suspect) diffusion model: PureDiffusion by default, Elijah as the baseline.

    ``model_or_path``: a DiffusionModel, a model folder, or None for the embedded demo model. ``options``: any
    option of InversionConfig or DetectionConfig by its flat name (steps=50, method="elijah", surrogate_steps=100,
    dtype="bfloat16", threshold=0.05, calibration="cal.json", ...), applied over ``config``. With ``evaluate`` the
    result carries the verdict: samples from eps + trigger and eps + pattern, their metrics (ASR and L2 when the
    model folder has a backdoor.json) and the calibrated decision. ``start``: a trigger to start from instead of
    ``init`` (refined as it is: the patch grid of ``patch_starts`` is not run). The caller's model is never modified.
    """
    from .families import family_of

    inv_opts, det_opts = split_options(options)
    given = with_options(config or InversionConfig(), inv_opts)
    given.resolved()  # every option checked before the model is loaded
    det = detection_config(det_opts)
    model, restore = prepared(model_or_path, device)
    try:
        cfg = given.resolved(family_of(model, given.attack_family).preset_key())  # the family's preset additions
        t0 = time.perf_counter()
        inv = invert_trigger(model, cfg, device=device, callback=callback, progress=progress, start=start)
        res = InversionResult(trigger=inv.trigger, config=cfg, model_hash=inv.model_hash,
                              model_source=inv.model_source, inversion=inv, timings=dict(inv.timings),
                              interrupted=inv.interrupted)
        if evaluate and not inv.interrupted:
            _add_verdict(res, model, det, progress)
        res.timings["total_seconds"] = round(time.perf_counter() - t0, 3)
        return res
    finally:
        restore()


def _add_verdict(res: InversionResult, model, det: DetectionConfig, progress: bool) -> None:
    """Join the verdict on res.trigger into ``res``; Ctrl-C while sampling keeps the trigger and marks ``res``
    interrupted, without metrics."""
    t1 = time.perf_counter()
    try:
        res.verdict = judge(res.trigger, model, res.config, det, given_trigger=res.given_trigger, progress=progress)
    except KeyboardInterrupt:
        res.interrupted = True
        log.warning("interrupted while sampling: the trigger is kept, metrics are missing")
    res.timings["evaluation_seconds"] = round(time.perf_counter() - t1, 3)


def detect(model_or_path=None, *, trigger=None, config: InversionConfig | None = None, device=None,
           progress: bool = False, **options) -> DetectionResult:
    """Is this model backdoored? Invert its trigger (or take ``trigger``: a tensor, name or file), sample from
    eps + trigger and eps + its pattern, and compare the pattern's uniformity with the clean-model threshold of the
    calibration (``calibration=FILE``, default the shipped one).

    With ``trigger`` only the engine, clip_sample and detection options apply: an inversion option is an error,
    not ignored.
    """
    if trigger is None:
        return DetectionResult(invert(model_or_path, config=config, device=device, progress=progress, **options))
    inv_opts, det_opts = split_options(options)
    engine_names = set(option_names(type(InversionConfig().engine))) | {"clip_sample"}
    ignored = sorted(set(inv_opts) - engine_names) + (["config"] if config is not None else [])
    if ignored:
        raise PdfastError(f"'{ignored[0]}' has no effect when a trigger is given (it is judged, not inverted); "
                          "drop it or drop the trigger")
    cfg = with_options(InversionConfig(), inv_opts)
    check_choices(cfg)
    det = detection_config(det_opts)
    model, restore = prepared(model_or_path, device)
    try:
        res = InversionResult(trigger=_given(trigger, model), config=cfg, model_hash=model.content_hash(),
                              model_source=str(model.source))
        _add_verdict(res, model, det, progress)
        return DetectionResult(res)
    finally:
        restore()


def _given(trigger, model) -> torch.Tensor:
    """A given trigger (tensor, built-in name or file) as a float CPU tensor of the model's shape."""
    from .patterns import load_pattern

    if not torch.is_tensor(trigger):
        trigger = load_pattern(trigger, model.sample_size, model.channels, kind="trigger", any_range=True)
    if tuple(trigger.shape[-3:]) != model.shape:
        raise PdfastError(f"trigger has shape {tuple(trigger.shape)}, the model needs {model.shape}")
    return trigger.detach().float().cpu().reshape(model.shape)
