"""report.json (versioned schema) and the files of a run: trigger.safetensors (the trigger and its pattern),
trigger.png (trigger, pattern, ground truth), samples.png and pattern_samples.png.

The report layer reads the results: a joined result (pdfast.api.InversionResult) of an inversion
(pdfast.inversion.Inversion: config, lambda table, losses) and its verdict (pdfast.detection.Verdict: metrics,
samples); neither of those knows this module."""
from __future__ import annotations

import datetime as _dt
from pathlib import Path

import torch

SCHEMA = "pdfast.report/1"


def inversion_report(res) -> dict:
    """The JSON-ready report of a joined result (pdfast.api.InversionResult): config, lambda table and losses of
    its inversion, metrics and verdict of its verdict, timings, device, versions."""
    from .envinfo import environment

    given = res.given_trigger
    return {
        "schema": SCHEMA,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "kind": "given-trigger" if given else "inversion",
        "interrupted": res.interrupted,
        "model": {"source": res.model_source, "content_hash": res.model_hash},
        "config": None if given else res.config.to_dict(),
        "engine": res.engine,
        "scales": res.scales.to_dict() if res.scales is not None else None,
        "metrics": res.metrics,
        "loss": {"first": res.losses[0] if res.losses else None, "last": res.losses[-1] if res.losses else None,
                 "history": [round(v, 6) for v in res.losses], "drawn_steps": res.drawn_steps},
        "timings": res.timings,
        "selection": None if res.inversion is None else res.inversion.selection,
        "environment": environment(),
    }


def trigger_metadata(res) -> dict[str, str]:
    """safetensors metadata (strings): method, K, scale source, seed, model hash, versions."""
    import diffusers

    from . import __version__

    c = res.config
    return {"schema": SCHEMA, "method": c.method, "steps": str(c.steps),
            "scales": res.scales.source if res.scales is not None else "none", "seed": str(c.seed),
            "model_hash": res.model_hash, "model_source": res.model_source, "pdfast": __version__,
            "torch": torch.__version__, "diffusers": diffusers.__version__,
            "interrupted": str(res.interrupted).lower()}


def save_result(res, out) -> Path:
    """Write the outputs into ``out`` atomically: on any error nothing is left half-written, and when writing fails
    at the end (disk full, folder gone) they go to a rescue folder named by the PdfastError raised
    (io.write_or_rescue), so the trigger is never lost."""
    from safetensors.torch import save

    from .io import atomic_write_bytes, atomic_write_json, save_labelled_png, save_png, write_or_rescue
    from .metrics import trigger_pattern

    trigger = res.trigger.detach().float().contiguous().cpu()
    pattern = trigger_pattern(trigger).contiguous()
    blob = save({"trigger": trigger, "pattern": pattern}, metadata=trigger_metadata(res))
    report = inversion_report(res)
    pics = [trigger.clamp(-1, 1), pattern.clamp(-1, 1)]
    labels = ["given trigger" if res.given_trigger else "inverted", "pattern"]
    if res.ground_truth is not None:
        pics.append(res.ground_truth.detach().float().cpu())
        labels.append("ground truth")

    def write(folder: Path) -> None:
        atomic_write_bytes(folder / "trigger.safetensors", blob)
        save_labelled_png(folder / "trigger.png", torch.stack(pics), labels)
        if res.samples is not None:
            save_png(folder / "samples.png", res.samples, nrow=4)
        if res.pattern_samples is not None:
            save_png(folder / "pattern_samples.png", res.pattern_samples, nrow=4)
        atomic_write_json(folder / "report.json", report)

    return write_or_rescue(out, write)
