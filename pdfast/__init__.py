"""pdfast: fast trigger inversion and backdoor detection for diffusion models.

Heavy submodules are imported lazily so that ``import pdfast`` stays cheap and never imports Triton.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "PdfastError": ("pdfast.errors", "PdfastError"),
    "Schedule": ("pdfast.schedule", "Schedule"),
    "DiffusionModel": ("pdfast.model", "DiffusionModel"),
    "load_model": ("pdfast.loading", "load_model"),
    "invert": ("pdfast.api", "invert"),
    "InversionConfig": ("pdfast.config", "InversionConfig"),
    "DetectionConfig": ("pdfast.config", "DetectionConfig"),
    "InversionResult": ("pdfast.api", "InversionResult"),
    "detect": ("pdfast.api", "detect"),
    "DetectionResult": ("pdfast.api", "DetectionResult"),
    "calibrate": ("pdfast.calibration", "calibrate"),
    "CalibrationConfig": ("pdfast.config", "CalibrationConfig"),
    "CalibrationResult": ("pdfast.calibration", "CalibrationResult"),
    "demo_path": ("pdfast.demo", "demo_path"),
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        mod, attr = _LAZY[name]
        value = getattr(importlib.import_module(mod), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'pdfast' has no attribute {name!r}")
