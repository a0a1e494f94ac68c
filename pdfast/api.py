"""The library's entry points, ``pdfast.invert`` and ``pdfast.detect``: inversion (pdfast.inversion) joined with the
verdict (pdfast.detection). The CLI verbs of the same names call these, with options from the same definition
(pdfast.config): any InversionConfig or DetectionConfig option name is a keyword here and a flag there.
"""
from __future__ import annotations

import logging
import time
from dataclasses import replace

import torch

from .config import DetectionConfig, InversionConfig, option_names, with_options
from .detection import DetectionResult, judge
from .errors import PdfastError
from .inversion import Callback, InversionResult, invert_trigger, prepared

log = logging.getLogger(__name__)


def split_options(options: dict) -> tuple[dict, dict]:
    """(inversion options, detection options) from flat keywords; unknown names are errors (with_options)."""
    det_names = set(option_names(DetectionConfig))
    return ({k: v for k, v in options.items() if k not in det_names},
            {k: v for k, v in options.items() if k in det_names})


def with_clip_sample(model, clip: str) -> None:
    """Set the schedule's clip_sample on the prepared model (a wrapper: the caller's model keeps its own)."""
    if clip == "auto" or model.schedule.clip_sample == (clip == "on"):
        return
    model.schedule = replace(model.schedule, clip_sample=clip == "on")
    model.invalidate_hash()


def invert(model_or_path=None, *, config: InversionConfig | None = None, device=None,
           callback: Callback | None = None, evaluate: bool = True, progress: bool = False,
           start: torch.Tensor | None = None, **options) -> InversionResult:
    """Invert the trigger of a (suspect) diffusion model: PureDiffusion by default, Elijah as the baseline.

    ``model_or_path``: a DiffusionModel, a model folder, or None for the embedded demo model. ``options``: any
    option of InversionConfig or DetectionConfig by its flat name (steps=50, method="elijah", surrogate_steps=100,
    dtype="bfloat16", threshold=0.05, ...), applied over ``config``. With ``evaluate`` the result carries samples
    from eps + trigger and eps + pattern and their metrics and verdict (ASR and L2 when the model folder has a
    backdoor.json). ``start``: a trigger to start from instead of ``init``. The caller's model is never modified.
    """
    inv_opts, det_opts = split_options(options)
    cfg = with_options(config or InversionConfig(), inv_opts).resolved()
    det = with_options(DetectionConfig(), det_opts)
    model, restore = prepared(model_or_path, device)
    try:
        with_clip_sample(model, cfg.clip_sample)
        t0 = time.perf_counter()
        result, engine = invert_trigger(model, cfg, device=device, callback=callback, progress=progress, start=start)
        if evaluate and not result.interrupted:
            _judge_kept(result, model, engine, det, progress)
        result.timings["total_seconds"] = round(time.perf_counter() - t0, 3)
        return result
    finally:
        restore()


def _judge_kept(result: InversionResult, model, engine, det: DetectionConfig, progress: bool) -> None:
    """judge() the trigger; Ctrl-C while sampling keeps the finished trigger and marks the result interrupted."""
    t1 = time.perf_counter()
    try:
        judge(result, model, engine, n=det.n_eval, seed=det.eval_seed, threshold=det.threshold,
              pattern_rms=det.pattern_rms, progress=progress)
    except KeyboardInterrupt:
        result.interrupted = True
        log.warning("interrupted while sampling: the trigger is kept, metrics are missing")
    result.timings["evaluation_seconds"] = round(time.perf_counter() - t1, 3)


def detect(model_or_path=None, *, trigger=None, config: InversionConfig | None = None, device=None,
           progress: bool = False, **options) -> DetectionResult:
    """Is this model backdoored? Invert its trigger (or take ``trigger``: a tensor, name or file), sample from
    eps + trigger and eps + its pattern, and compare the pattern's uniformity with the clean-model threshold.

    With ``trigger`` only the engine and detection options apply: an inversion option is an error, not ignored.
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
    det = with_options(DetectionConfig(), det_opts)
    model, restore = prepared(model_or_path, device)
    try:
        with_clip_sample(model, cfg.clip_sample)
        return DetectionResult(_judge_given(model, trigger, cfg, det, progress))
    finally:
        restore()


def _judge_given(model, trigger, cfg: InversionConfig, det: DetectionConfig, progress: bool) -> InversionResult:
    """An InversionResult for a given trigger, judged with the configured engine."""
    from .engine import make_engine
    from .patterns import load_pattern

    if not torch.is_tensor(trigger):
        trigger = load_pattern(trigger, model.sample_size, model.channels, kind="trigger", any_range=True)
    if tuple(trigger.shape[-3:]) != model.shape:
        raise PdfastError(f"trigger has shape {tuple(trigger.shape)}, the model needs {model.shape}")
    engine = make_engine(cfg.engine.name, model, **cfg.engine.engine_options())
    res = InversionResult(trigger=trigger.detach().float().cpu().reshape(model.shape), config=cfg, scales=None,
                          losses=[], drawn_steps=[], timings={}, model_hash=model.content_hash(),
                          model_source=str(model.source), engine=engine.describe(), given_trigger=True)
    _judge_kept(res, model, engine, det, progress)
    return res
