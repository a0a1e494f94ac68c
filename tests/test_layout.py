"""The product apart from the research (README "Layout"): the package never imports the research or the benchmarks,
those use only pdfast's public names, functions stay short, the repository tracks no regenerable caches, and
README.md stays a user's guide. (No block written twice inside the package: tests/test_structure.py.)"""
import ast
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIRS = ("pdfast", "kernels")
OUTSIDE_DIRS = ("research", "benchmarks")
MAX_FUNCTION_LINES = 60
MAX_TRACKED_FILES = 400  # outside the zoos' model folders (weights and their configs are data, kept in git)
MAX_README_WORDS = 1050  # "at most about 1,000", counted as `wc -w` counts, code blocks included


def _py_files(*dirs: str):
    for d in dirs:
        yield from sorted((ROOT / d).rglob("*.py"))


def _pdfast_imports(tree: ast.AST):
    """(module, imported names) of every import of pdfast or pdfast.kernels, at any depth (lazy imports too)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name == "pdfast" or a.name.startswith("pdfast."):
                    yield a.name, []
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module \
                and (node.module == "pdfast" or node.module.startswith("pdfast.")):
            yield node.module, [a.name for a in node.names]


def test_package_never_imports_research_or_benchmarks():
    bad = []
    for f in _py_files(*PACKAGE_DIRS):
        for node in ast.walk(ast.parse(f.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            bad += [f"{f.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] in OUTSIDE_DIRS + ("bench",)]
    assert not bad, bad


def test_research_and_benchmarks_use_only_public_pdfast_names():
    """No `from pdfast.x import _y`, no `import pdfast._x`, no `pdfast.x._y` / `module._y` on an imported pdfast
    module."""
    bad = []
    for f in _py_files(*OUTSIDE_DIRS):
        tree = ast.parse(f.read_text())
        aliases = set()
        for mod, names in _pdfast_imports(tree):
            if any(part.startswith("_") for part in mod.split(".")):
                bad.append(f"{f.relative_to(ROOT)}: import {mod}")
            bad += [f"{f.relative_to(ROOT)}: from {mod} import {n}" for n in names if n.startswith("_")]
        for node in ast.walk(tree):  # names bound to pdfast modules: `import pdfast.x as m`, `from pdfast import m`
            if isinstance(node, ast.Import):
                aliases |= {(a.asname or a.name).split(".")[0] for a in node.names if a.name.startswith("pdfast")}
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pdfast") \
                    and not node.level:
                aliases |= {a.asname or a.name for a in node.names}
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                base = node.value
                while isinstance(base, ast.Attribute):
                    base = base.value
                if isinstance(base, ast.Name) and base.id in aliases:
                    bad.append(f"{f.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}")
    assert not bad, bad


def test_no_function_over_60_lines():
    long = []
    for f in _py_files(*PACKAGE_DIRS, *OUTSIDE_DIRS):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{f.relative_to(ROOT)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, long


def _tracked() -> list[str] | None:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        return None
    proc = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    return proc.stdout.splitlines() if proc.returncode == 0 else None


def test_regenerable_outputs_are_not_tracked():
    files = _tracked()
    if files is None:
        pytest.skip("not a git checkout: nothing to count")
    zoo_models = re.compile(r"^research/zoo/((v[0-9]+/)?models|pilot)/")
    outside = [f for f in files if not zoo_models.match(f)]
    assert len(outside) <= MAX_TRACKED_FILES, (len(outside), sorted({f.split("/")[0] for f in outside}))


def test_readme_is_a_users_guide():
    text = (ROOT / "README.md").read_text()
    words = len(text.split())
    assert words <= MAX_README_WORDS, words
    heads = [h.lower() for h in re.findall(r"^## (.+)$", text, flags=re.M)]
    for need in ("two commands", "what it does", "results", "limitations", "as a library", "layout", "citation"):
        assert any(need in h for h in heads), (need, heads)
