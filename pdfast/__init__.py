"""pdfast: fast trigger inversion and backdoor detection for diffusion models.

Heavy submodules are imported lazily so that ``import pdfast`` stays cheap and never imports Triton.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> the module that defines it (imported at first use)
_LAZY_MODULES = {
    "pdfast.errors": ("PdfastError",),
    "pdfast.schedule": ("Schedule",),
    "pdfast.model": ("DiffusionModel",),
    "pdfast.loading": ("load_model",),
    "pdfast.config": ("InversionConfig", "DetectionConfig", "CalibrationConfig"),
    "pdfast.api": ("invert", "detect", "InversionResult", "DetectionResult"),
    "pdfast.calibration": ("calibrate", "CalibrationResult"),
    "pdfast.demo": ("demo_path",),
    "pdfast.scanner": ("scan", "ScanResult"),
}
_LAZY = {name: (module, name) for module, names in _LAZY_MODULES.items() for name in names}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        mod, attr = _LAZY[name]
        value = getattr(importlib.import_module(mod), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'pdfast' has no attribute {name!r}")
