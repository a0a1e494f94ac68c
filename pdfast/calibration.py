"""Calibrate the verdict's threshold (docs/method.md section 7) for one image size, architecture and setting.

Every clean and backdoored model is inverted and judged exactly as a run with the same options would be
(``pdfast.api.invert``: the InversionConfig, DetectionConfig and engine options given here), and the verdict's
statistic s of each (the pattern's uniformity by default; low = backdoored) is recorded. The threshold sits between
the two groups:
    threshold = sqrt(min_clean s * h)   h = the highest backdoored s below min_clean s (every clean model stays clean,
                                        as many backdoored ones as can be are caught; all of them when they separate),
    threshold = min_clean s / 2         when no backdoored s is below min_clean s, or none is given;
TERD's KL threshold is (max_clean kl + min_backdoored kl) / 2 where those separate (kl_backdoored > kl_clean).

The calibration is written, with the settings, models and environment it was made with, into the file the user
names, under "by_size" beside the other image sizes that file holds (the format of the shipped
``pdfast/detection_calibration.json``, which changes only by a reviewed commit); ``--calibration FILE`` makes the
verdict read it. The layer above pdfast.api, beside the CLI.
"""
from __future__ import annotations

import datetime as _dt
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .config import CalibrationConfig, InversionConfig, option_names, with_options
from .errors import PdfastError
from .model import DiffusionModel

ROW_METRICS = ("trigger_miss", "trigger_fires", "pattern_uniformity", "pattern_uniformity_q25", "uniformity",
               "uniformity_trimmed", "kl_mean", "asr", "asr_paper", "pattern_asr", "l2", "pattern_l2",
               "plain_uniformity", "pattern_effect", "trigger_effect")


@dataclass
class CalibrationResult:
    """The calibration of one image size as written (``entry``, the format pdfast.detection reads) and the file
    it was written to (None when not written)."""

    entry: dict
    file: Path | None = None

    @property
    def threshold(self) -> float:
        return self.entry["threshold"]

    @property
    def statistic(self) -> str:
        return self.entry["statistic"]

    @property
    def separated(self) -> bool | None:
        """Whether every backdoored model's statistic is below every clean one's (None: no backdoored model)."""
        return self.entry["separated"]

    @property
    def models(self) -> list[dict]:
        return self.entry["models"]

    def to_dict(self) -> dict:
        return dict(self.entry)


def calibrate(clean: Sequence = (), backdoored: Sequence = (), *, out=None, config: InversionConfig | None = None,
              device=None, progress: bool = False, **options) -> CalibrationResult:
    """Calibrate the verdict on ``clean`` (at least one) and ``backdoored`` models (folders or DiffusionModels of
    one image size): invert and judge each with ``options`` (any InversionConfig or DetectionConfig option but
    threshold, and ``statistic``), place the threshold (geometric mean of the highest backdoored and the lowest
    clean statistic, else half the lowest clean one) and write it into ``out`` when given (merged per image size).
    Bad input (no clean model, a folder that is not a model, an unwritable ``out`` or one that is not a calibration
    file) is a PdfastError before any work."""
    from .api import detection_config, split_options

    cal_names = set(option_names(CalibrationConfig))
    ccfg = with_options(CalibrationConfig(clean=tuple(clean), backdoored=tuple(backdoored)),
                        {k: v for k, v in options.items() if k in cal_names})
    inv_opts, det_opts = split_options({k: v for k, v in options.items() if k not in cal_names})
    if "threshold" in det_opts:
        raise PdfastError("'threshold' has no effect when calibrating (the threshold is what is calibrated); drop it")
    _check(ccfg)
    given = with_options(config or InversionConfig(), inv_opts)
    cfg = given.resolved()
    det = detection_config(det_opts)
    out = _check_out(out)
    models = _load(ccfg, device)
    # each model resolves ``given`` itself (pdfast.invert), so the preset's additions for its family apply
    rows = [measure(m, label, given, det_opts, device=device, progress=progress) for m, label in models]
    entry = calibration_entry(rows, ccfg.statistic, _settings(cfg, det, [m for m, _ in models]),
                              source="pdfast calibrate", engine=cfg.engine)
    return CalibrationResult(entry, write_calibration(out, entry) if out is not None else None)


def _check(ccfg: CalibrationConfig) -> None:
    from .config import check_choices

    check_choices(ccfg)
    if not ccfg.clean:
        raise PdfastError("no clean model to calibrate on: give --clean MODEL (once per model; at least one)")


def _check_out(out) -> Path | None:
    """``out`` checked before any work: a writable file path, and if it exists already, a calibration file (it is
    merged into, never replaced by something else)."""
    from .detection import read_calibration
    from .io import ensure_output_file

    if out is None:
        return None
    out = ensure_output_file(out)
    if out.exists():
        try:
            read_calibration(out, option="--out")
        except PdfastError as e:
            raise PdfastError(f"{e}; --out must be a new file or a calibration file to add this size to") from None
    return out


def _load(ccfg: CalibrationConfig, device) -> list[tuple[DiffusionModel, str]]:
    """Every model with its label, loaded before any work (a folder that is not a model stops here); one image size."""
    from .loading import load_model

    models = [(m if isinstance(m, DiffusionModel) else load_model(m, device=device or "cpu"), label)
              for label, specs in (("clean", ccfg.clean), ("backdoored", ccfg.backdoored)) for m in specs]
    sizes = sorted({m.sample_size for m, _ in models})
    if len(sizes) > 1:
        raise PdfastError(f"the models have image sizes {', '.join(map(str, sizes))}; a threshold is calibrated for "
                          "one size: calibrate each size on its own (into the same --out file)")
    return models


def measure(model: DiffusionModel, label: str, cfg: InversionConfig, det_options: dict | None = None, *,
            device=None, progress: bool = False) -> dict:
    """One model's row: invert and judge it as pdfast.invert does with ``cfg`` and ``det_options``, and keep the
    verdict statistics (pattern and plain uniformity, its lower quartile, KL, and ASR / L2 where the truth is
    known) with the pattern energy they were sampled at."""
    from .api import invert

    res = invert(model, config=cfg, device=device, progress=progress, **(det_options or {}))
    if res.interrupted:
        raise KeyboardInterrupt
    m = res.metrics
    return {"model": str(model.source), "label": label, "sample_size": model.sample_size,
            "architecture": architecture(model), "pattern_rms": m["pattern_rms"],
            **{k: m.get(k) for k in ROW_METRICS}, "seconds": res.timings["total_seconds"]}


def architecture(model: DiffusionModel) -> dict:
    """What identifies a network's architecture in a calibration: its class, parameter count and, for a UNet,
    its block widths and depth."""
    net = model.net
    cfg = getattr(net, "config", None) or {}
    arch = {"class": type(net).__name__,
            "parameters": sum(p.numel() for p in net.parameters()) if hasattr(net, "parameters") else None}
    for key in ("block_out_channels", "layers_per_block"):
        if key in cfg:
            arch[key] = list(cfg[key]) if isinstance(cfg[key], (list, tuple)) else cfg[key]
    return arch


def _settings(cfg: InversionConfig, det, models: list[DiffusionModel]) -> dict:
    """The settings a run must share with the calibration (pdfast.detection.run_settings, compared at every
    verdict), and the seed; the same for every model, else a PdfastError names the one that differs."""
    from .detection import run_settings

    each = [run_settings(cfg, det, m, False) for m in models]
    for key in each[0]:
        if any(s[key] != each[0][key] for s in each):
            raise PdfastError(f"the models differ in {key.replace('_', ' ')} ({sorted({str(s[key]) for s in each})}); "
                              "calibrate models of one setting together (--clip-sample on|off fixes clip_sample)")
    return {**each[0], "seed": cfg.seed}


def place_threshold(clean: Sequence[float], backdoored: Sequence[float]) -> tuple[float, bool | None]:
    """(threshold, separated) for statistics that are low on backdoored models: sqrt(min clean * h), h the highest
    backdoored value below every clean one (all of them when they separate), so no clean model is called
    backdoored and as many backdoored ones as can be are; min clean / 2 when no backdoored value is below every clean
    one (or none is given, or h is 0). separated: every backdoored value below every clean one (None without
    backdoored models)."""
    lo_clean = min(clean)
    if not backdoored:
        return lo_clean / 2, None
    below = [v for v in backdoored if v < lo_clean]
    separated = len(below) == len(backdoored)
    hi_bad = max(below, default=0.0)
    return (math.sqrt(lo_clean * hi_bad) if hi_bad > 0 else lo_clean / 2), separated


def kl_threshold(clean: Sequence[float | None], backdoored: Sequence[float | None]) -> float | None:
    """TERD's KL threshold, (max clean + min backdoored) / 2, where the backdoored models' KL means are all above
    the clean ones'; else None (the KL signal is then not reported)."""
    kl_clean = max((v for v in clean if v is not None), default=None)
    kl_bad = min((v for v in backdoored if v is not None), default=None)
    return (kl_clean + kl_bad) / 2 if None not in (kl_clean, kl_bad) and kl_bad > kl_clean else None


def calibration_entry(rows: list[dict], statistic: str, settings: dict, *, source: str, engine=None) -> dict:
    """The calibration of one image size from per-model rows ("label" clean|backdoored, the statistic, "kl_mean",
    "pattern_rms"): threshold (place_threshold), KL threshold, the pattern energy, a provenance line naming
    ``source``, the settings, the models and the environment, in the format pdfast.detection reads."""
    from dataclasses import asdict

    from .envinfo import environment

    clean = [r for r in rows if r["label"] == "clean"]
    bad = [r for r in rows if r["label"] == "backdoored"]
    if not clean:
        raise PdfastError("no clean model to calibrate on: give at least one clean model")
    thr, separated = place_threshold([r[statistic] for r in clean], [r[statistic] for r in bad])
    kl_thr = kl_threshold([r.get("kl_mean") for r in clean], [r.get("kl_mean") for r in bad])
    rms = {r.get("pattern_rms") for r in rows}
    if len(rms) > 1:
        raise PdfastError(f"the models' patterns were sampled at different energies {sorted(map(str, rms))}; "
                          "calibrate on rows made with one pattern energy")
    rms = rms.pop()
    halved = thr == min(r[statistic] for r in clean) / 2
    rule = ("half the lowest clean value" if halved
            else "geometric mean of the lowest clean value and the highest backdoored value below it")
    return {"statistic": statistic, "threshold": thr, "pattern_rms": rms, "kl_threshold": kl_thr,
            "provenance": _provenance(settings, len(clean), len(bad), rms, rule, source), "separated": separated,
            "settings": settings, "models": rows, "engine": None if engine is None else asdict(engine),
            "date": _dt.datetime.now().isoformat(timespec="seconds"), "environment": environment()}


def _provenance(settings: dict, n_clean: int, n_bad: int, rms, rule: str, source: str) -> str:
    size = settings.get("sample_size")
    method = ("Elijah" if settings.get("method") == "elijah"
              else f"PureDiffusion (preset {settings.get('preset')}, scales {settings.get('scales')})")
    energy = f", the pattern at rms {rms:g}" if rms is not None else ", the pattern at its own energy"
    return (f"calibrated on {n_clean} clean and {n_bad} backdoored {size}x{size} models, K={settings.get('steps')}, "
            f"{method}{energy}; threshold = {rule} ({source})")


def merged(old: dict | None, entry: dict) -> dict:
    """A calibration file's content with ``entry`` for its image size: under "by_size" beside the other sizes'
    (pdfast.detection picks the run's size), and at the top level too when the file had none or the top level was
    for the same size."""
    old = old or {}
    size = entry["settings"].get("sample_size")
    by_size = dict(old.get("by_size") or {})
    if size is not None:
        by_size[str(size)] = entry
    top_size = (old.get("settings") or {}).get("sample_size")
    top = entry if "threshold" not in old or top_size in (None, size) else {
        k: v for k, v in old.items() if k != "by_size"}
    return {**top, "by_size": by_size}


def write_calibration(path, entry: dict) -> Path:
    """Merge ``entry`` into the calibration file ``path`` (created if missing; an existing file must be one) and
    write it atomically. Returns the path."""
    from .detection import read_calibration
    from .io import atomic_write_json

    path = Path(path)
    old = read_calibration(path, option="--out") if path.exists() else None
    atomic_write_json(path, merged(old, entry))
    return path
