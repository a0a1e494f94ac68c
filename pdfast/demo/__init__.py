"""The embedded demo model: a small BadDiffusion-backdoored DDPM made by pdfast's own train and attack
commands (recipe in ``make_demo.sh`` beside this file, measurements in ``RESULTS.md``)."""
from __future__ import annotations

from pathlib import Path

DEMO_DIR = Path(__file__).resolve().parent / "model"


def demo_path() -> Path:
    """Folder of the embedded demo model (a diffusers pipeline folder with backdoor.json)."""
    return DEMO_DIR
