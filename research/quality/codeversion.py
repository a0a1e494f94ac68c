"""The code version of a result: one short id for what computes the numbers (the pdfast modules' ASTs, the native
kernels, EVAL_VERSION), so that an entry of the cache is found again only while that code is unchanged."""
from __future__ import annotations

import ast
import datetime as _dt
import hashlib
import json
from pathlib import Path

from .base import sha, write_json

# bump when a measurement defined in this package changes (measure.py's sampling split or metrics, planner.py's
# trivial set): the package's own code is not hashed
EVAL_VERSION = 2
# pdfast modules (and packages: their submodules too) whose code does not change a number, left out of the hash
NOT_NUMERIC = {"pdfast.cli", "pdfast.report", "pdfast.envinfo", "pdfast.io", "pdfast.errors", "pdfast.__main__"}
_CODE: tuple[str, dict] | None = None  # once per process: the modules are imported once, later edits do not run


def code_version(cache: Path | None = None) -> dict:
    """What computes the numbers, as one short id: the AST (docstrings and comments excluded) of every module of
    pdfast and pdfast.kernels except NOT_NUMERIC, the native kernels' sources and built library, and EVAL_VERSION.
    Every hashed module is imported first, so the code that runs is the code hashed even when the files change
    later. With ``cache``, the per-file digests are kept in cache/code-versions/<id>.json (what changed between two
    versions can be read there)."""
    global _CODE
    if _CODE is None:
        _CODE = _hash_code()
    h, files = _CODE
    if cache is not None:
        f = cache / "code-versions" / f"{h}.json"
        if not f.is_file():
            write_json(f, {"id": h, "eval_version": EVAL_VERSION, "files": files,
                           "date": _dt.datetime.now().isoformat(timespec="seconds")})
    return {"id": h, "eval_version": EVAL_VERSION, "modules": len(files)}


def _hash_code() -> tuple[str, dict]:
    """(id, per-file digests): every module of pdfast and pdfast.kernels wherever they are installed from (found by
    walking the packages' folders, so new or moved modules are hashed too), and the native kernel files."""
    import importlib
    import importlib.util

    files = {}
    for pkg in ("pdfast", "pdfast.kernels"):
        spec = importlib.util.find_spec(pkg)
        if spec is None or not spec.origin:
            continue
        base = Path(spec.origin).parent
        for f in sorted(base.rglob("*.py")):
            rel = f.relative_to(base).with_suffix("")
            name = ".".join((pkg, *rel.parts)).removesuffix(".__init__")
            if not _numeric(name) or "tests" in rel.parts or (pkg == "pdfast" and rel.parts[0] == "kernels"):
                continue
            try:
                importlib.import_module(name)
            except Exception as e:  # noqa: BLE001 - hashed anyway; a module that does not import does not run
                files[name + ":import"] = f"{type(e).__name__}"
            files[name] = _ast_digest(f)
        if pkg == "pdfast.kernels":
            for f in sorted(base.rglob("*")):
                if f.is_file() and (f.suffix in (".cpp", ".h", ".cu", ".c", ".so")):
                    files[str(f.relative_to(base))] = hashlib.sha256(f.read_bytes()).hexdigest()[:16]
    return sha({"files": files, "eval_version": EVAL_VERSION})[:10], files


def _numeric(name: str) -> bool:
    """Whether a module's code can change a number: not NOT_NUMERIC (nor inside one of its packages), not the
    native library's build script."""
    return not (name.endswith("native_build") or any(name == n or name.startswith(n + ".") for n in NOT_NUMERIC))


def changed_modules(cache: Path, old: str, new: str) -> list[str] | None:
    """The files whose digest differs between two code versions (None when either was not recorded)."""
    try:
        a = json.loads((cache / "code-versions" / f"{old}.json").read_text())["files"]
        b = json.loads((cache / "code-versions" / f"{new}.json").read_text())["files"]
    except (OSError, ValueError, KeyError):
        return None
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def _ast_digest(path: Path) -> str:
    """A module's AST without its docstrings (module, class, function), so comments and docs change no id."""
    try:
        tree = ast.parse(path.read_text())
    except (OSError, SyntaxError) as e:
        return f"unreadable:{e}"
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and \
                isinstance(getattr(body[0], "value", None), ast.Constant) and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
    return hashlib.sha256(ast.dump(tree, annotate_fields=False).encode()).hexdigest()[:16]
