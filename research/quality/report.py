"""The three outputs (research/results/zoo-v1-report.md, quality.json, the trigger sheet), regenerated from the cache."""
from __future__ import annotations

import datetime as _dt
from pathlib import Path

from .base import log, show_path, write_json
from .cache import collect
from .codeversion import changed_modules
from .document import render_md
from .planner import EXTRA_SEED, Settings
from .scoring import detection_scores, head_to_head, truth_pattern_effect
from .sheet import sheet
from .zoo import ZooModel


def build_report(cache: Path, models: list[ZooModel], settings: Settings, code: dict, env: dict, git: dict,
                 command: str, planned: dict, md_path: Path, json_path: Path, sheet_path: Path) -> dict:
    """Score every cached entry of the built models and write the three outputs; returns the report object (what
    quality.json holds). The sheet failing only logs a warning."""
    from pdfast.detection import calibration

    entries = collect(cache, models, settings, code["id"])
    splits = [s for s in ("dev", "test") if any(m.split == s for m in models)] + \
        sorted({m.split for m in models} - {"dev", "test"})
    det = {s: detection_scores(entries, models, s, lambda size: calibration(sample_size=size)) for s in splits}
    meta = {"date": _dt.datetime.now().isoformat(timespec="seconds"), "command": command, "git": git,
            "code_version": code, "environment": env, "settings": settings.ident(),
            "calibration": shipped_calibration(calibration()),
            "eval": {"n_samples": settings.n, "verdict_samples": min(settings.verdict_n, settings.n),
                     "verdict_seed": settings.verdict_seed, "rest_seed": EXTRA_SEED,
                     "asr_threshold": settings.asr_threshold, "engine": "fast (engine.sample, full DDPM chain)"}}
    versions: dict[str, int] = {}
    for e in entries:
        versions[e["code_version"]] = versions.get(e["code_version"], 0) + 1
    meta["cache"] = show_path(cache)
    meta["changed_since"] = {v: changed_modules(cache, v, code["id"]) for v in versions if v != code["id"]}
    meta["entries_by_code_version"] = versions
    obj = {"schema": "pdfast.quality-report/1", **meta,
           "models": [{"name": m.name, "split": m.split, "kind": m.kind, "backdoored": m.backdoored,
                       "hash": m.hash, "recipe": m.recipe, "ground_truth_at_build": m.zoo.get("ground_truth")}
                      for m in models],
           "coverage": planned, "entries": entries, "detection": det,
           "head_to_head": {sp: head_to_head(entries, [m for m in models if m.split == sp]) for sp in splits},
           "truth_pattern_effect": {sp: truth_pattern_effect(entries, models, sp) for sp in splits}}
    write_json(json_path, obj)
    md_path.parent.mkdir(parents=True, exist_ok=True)
    from pdfast.io import atomic_write_bytes

    atomic_write_bytes(md_path, render_md(obj, models).encode())
    try:
        sheet(entries, models, cache, sheet_path,
              footer=f"{meta['date']}; commit {(git.get('commit') or '?')[:10]}"
                     f"{' (modified tree)' if git.get('dirty') else ''}; code {code['id']}; {env.get('device')}; "
                     f"torch {env.get('torch')}; n = {settings.n} samples per trigger"
                     + ("; SMOKE SETTINGS" if settings.smoke else ""))
    except Exception as e:  # noqa: BLE001 - a broken picture must not lose the tables
        log(f"warning: the trigger sheet failed: {type(e).__name__}: {e}")
    return obj


def shipped_calibration(cal: dict) -> dict:
    """What the report records of pdfast's shipped detection calibration: the top level and each image size's."""
    return {**{k: cal.get(k) for k in ("statistic", "threshold", "pattern_rms", "kl_threshold", "provenance",
                                       "settings", "date")},
            "by_size": {size: {k: c.get(k) for k in ("statistic", "threshold", "pattern_rms", "provenance", "settings")}
                        for size, c in sorted((cal.get("by_size") or {}).items(), key=lambda x: int(x[0]))}}
