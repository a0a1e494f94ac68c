"""The cache of results (research/results/quality/, out of git): where a unit's entry lives, the locks that let two
workers share it, the surrogate scale tables per code version, and reading the entries back for the report."""
from __future__ import annotations

import json
import os
from pathlib import Path

from .planner import Settings, Unit
from .zoo import ZooModel, model_hash


def entry_path(cache: Path, u: Unit, code: str) -> Path:
    """A unit's entry (its JSON; the safetensors beside it); the JSON is written last and marks the unit done."""
    return cache / "entries" / u.model.name / f"{u.stem()}-{code}.json"


def pdfast_cache(cache: Path, code: str) -> Path:
    """PDFAST_CACHE_DIR for the runs: the surrogate scale tables, per code version (calibration is measured too)."""
    return cache / "pdfast-cache" / code


def take_lock(cache: Path, u: Unit) -> Path | None:
    """The unit's lock file, created with this process's pid; None when a live process holds it (a dead one's lock
    is taken over)."""
    d = cache / "locks"
    d.mkdir(parents=True, exist_ok=True)
    f = d / f"{u.model.name}-{u.stem()}.lock"
    for _ in range(2):
        try:
            fd = os.open(f, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            os.write(fd, f"{os.getpid()}\n".encode())
            os.close(fd)
            return f
        except FileExistsError:
            try:
                pid = int(f.read_text().split()[0])
                os.kill(pid, 0)
                return None          # held by a live process
            except (ValueError, IndexError, ProcessLookupError, OSError):
                f.unlink(missing_ok=True)  # stale lock of a killed run
    return None


def collect(cache: Path, models: list[ZooModel], settings: Settings, code: str) -> list[dict]:
    """Every cached entry of the built models (current weights) with these settings: per (model, method, K) the
    entry of the current code version, else the newest of another version (marked stale)."""
    out = []
    sid = settings.id()
    for m in models:
        h = model_hash(m, cache)
        best: dict[tuple, tuple] = {}
        for f in (cache / "entries" / m.name).glob("*.json"):
            try:
                rec = json.loads(f.read_text())
            except (OSError, ValueError):
                continue
            if rec.get("model_hash") != h or rec.get("settings_id") != sid:
                continue
            key = (rec["method"], rec["k"])
            rank = (rec["code_version"] == code, f.stat().st_mtime)
            if key not in best or rank > best[key][0]:
                best[key] = (rank, rec, f)
        for (rank, rec, f) in best.values():
            rec = dict(rec, stale=not rank[0], file=str(f.relative_to(cache)) if f.is_relative_to(cache) else str(f),
                       verdict_pattern_rms=verdict_pattern_energy(rec, f))
            out.append(rec)
    return out


def verdict_pattern_energy(rec: dict, json_file: Path) -> float | None:
    """The energy (rms) of the pattern an entry's pattern samples were drawn from: as recorded, else measured on
    the pattern stored beside the entry (entries older than the record); None for a flat (all-zero) pattern, whose
    energy cannot be set, or when neither exists. The verdict's rates use an entry only at its calibration's energy."""
    if rec.get("verdict_pattern_rms") is not None:
        return float(rec["verdict_pattern_rms"])
    try:
        from safetensors.torch import load_file

        p = load_file(str(json_file.with_suffix(".safetensors")))["pattern"].double()
    except (OSError, ValueError, KeyError):
        return None
    rms = float(p.pow(2).mean().sqrt())
    return rms if rms > 0 else None
