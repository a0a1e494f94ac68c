"""Where the quality evidence lives and the small helpers every part of it shares: logging, content hashes, atomic
writes (pdfast.io) and the repository's git state."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

RESEARCH = Path(__file__).resolve().parents[1]
ROOT = RESEARCH.parent
ZOO = RESEARCH / "zoo" / "models"
RECIPE = RESEARCH / "zoo" / "recipe.json"
CACHE = RESEARCH / "results" / "quality"
REPORT_MD = ROOT / "research" / "results" / "zoo-v1-report.md"
REPORT_JSON = RESEARCH / "results" / "quality.json"
SHEET = RESEARCH / "results" / "quality-triggers.png"


def log(msg: str) -> None:
    """A progress line on stderr, stamped with the time."""
    print(f"[quality {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def sha(obj) -> str:
    """The SHA-256 of a JSON-able object (keys sorted): identities of units, settings, code versions."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def write_json(path: Path, obj) -> None:
    """A JSON file, written atomically (pdfast.io)."""
    from pdfast.io import atomic_write_json

    atomic_write_json(path, obj)


def save_tensors(path: Path, tensors: dict) -> None:
    """A safetensors file, written atomically (pdfast.io)."""
    from safetensors.torch import save

    from pdfast.io import atomic_write_bytes

    atomic_write_bytes(path, save({k: v.detach().float().cpu().contiguous() for k, v in tensors.items()}))


def git_info() -> dict:
    """HEAD's commit and whether tracked files differ from it (None where git cannot say)."""
    def run(*a):
        try:
            return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None
    commit = run("rev-parse", "HEAD")
    dirty = run("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit or None, "dirty": None if dirty is None else bool(dirty)}


def show_path(p: Path) -> str:
    """A path as the report shows it: relative to the repository when inside it."""
    p = Path(p).resolve()
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p)
