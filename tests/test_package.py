"""Packaging: a cheap `import pdfast` (never Triton, never the kernels), lazy attributes, pdfast.kernels installed."""
import importlib
import json
import subprocess
import sys

import pytest


def test_import_is_light():
    code = ("import json, sys, pdfast; print(json.dumps({'triton': 'triton' in sys.modules, "
            "'kernels': [m for m in sys.modules if m == 'kernels' or m.startswith(('pdfast.kernels', 'kernels.'))], "
            "'torch': 'torch' in sys.modules, 'version': pdfast.__version__}))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    seen = json.loads(r.stdout)
    assert seen["triton"] is False and seen["kernels"] == []
    assert seen["torch"] is False  # the lazy attributes keep even torch out until something is used
    assert seen["version"]


def test_version_matches_metadata():
    from importlib.metadata import version

    import pdfast

    assert isinstance(pdfast.__version__, str) and pdfast.__version__.count(".") >= 2
    assert pdfast.__version__ == version("pdfast")


def test_lazy_attributes():
    import pdfast

    for name in pdfast._LAZY:
        mod, attr = pdfast._LAZY[name]
        assert getattr(pdfast, name) is getattr(importlib.import_module(mod), attr), name
        assert name in pdfast.__all__
    assert "__version__" in pdfast.__all__
    from pdfast.errors import PdfastError
    from pdfast.schedule import Schedule

    assert pdfast.PdfastError is PdfastError and pdfast.Schedule is Schedule
    with pytest.raises(AttributeError, match="no_such_thing"):
        pdfast.no_such_thing  # noqa: B018


def test_kernels_subpackage_installed(tmp_path):
    """Run from an empty folder, so the repository root is not on sys.path and only the installation counts."""
    code = ("import importlib.util as u, json; import pdfast.kernels as k; top = u.find_spec('kernels'); "
            "print(json.dumps({'name': k.__name__, 'paths': list(u.find_spec('pdfast.kernels').submodule_search_locations), "
            "'top': top.origin if top else None}))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    seen = json.loads(r.stdout)
    assert seen["name"] == "pdfast.kernels"
    assert any(p.replace("\\", "/").rstrip("/").endswith("kernels") for p in seen["paths"])
    # never a top-level `kernels` package from this project: that name belongs to another distribution
    # that diffusers probes for
    assert seen["top"] is None or not any(seen["top"].startswith(p) for p in seen["paths"])
