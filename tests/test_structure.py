"""The structure the code promises (docs/method.md and the README's layout): one chain, one option definition,
detection above inversion, no import circle, small functions, no block of code written twice."""
import ast
import io
import keyword
import tokenize
from collections import defaultdict
from pathlib import Path

import click
import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "pdfast"


def _modules():
    for f in sorted(PKG.rglob("*.py")):
        rel = f.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield ".".join(parts), f


def _imports(name: str, path: Path) -> set[str]:
    """Every pdfast module this module imports, at module level or inside functions (lazy imports count too)."""
    tree = ast.parse(path.read_text())
    pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("pdfast")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")
                base = base[:len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.startswith("pdfast"):
                out.add(mod)
                out |= {f"{mod}.{a.name}" for a in node.names}
    return out


def test_no_import_circle_in_pdfast():
    mods = dict(_modules())
    graph = {m: {i for i in _imports(m, f) if i in mods and i != m and not m.startswith(i + ".")}
             for m, f in mods.items()}
    graph = {m: {i for i in deps if not i.startswith(m + ".")} for m, deps in graph.items()}  # a package's own parts
    state: dict[str, int] = {}

    def visit(m, stack):
        state[m] = 1
        for d in graph.get(m, ()):
            if d == "pdfast" or d.startswith("pdfast.kernels"):
                continue  # the lazy-attribute package root and the kernels package import nothing of pdfast
            if state.get(d) == 1:
                pytest.fail("import circle: " + " -> ".join(stack + [m, d]))
            if d not in state:
                visit(d, stack + [m])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [])


def test_detection_is_above_inversion():
    mods = dict(_modules())
    assert "pdfast.detection" not in _imports("pdfast.inversion", mods["pdfast.inversion"])
    assert "pdfast.inversion" in _imports("pdfast.api", mods["pdfast.api"])


def test_the_only_loops_over_timesteps_are_in_the_chain_module():
    """A for loop whose iterable names timesteps (or the chain's 'ts') lives in pdfast/chain.py alone."""
    offenders = []
    for name, f in _modules():
        if name == "pdfast.chain":
            continue
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, (ast.For, ast.comprehension)):
                src = ast.unparse(node.iter)
                chain_walk = isinstance(node, ast.For) and src.startswith("range(") and any(
                    w in src for w in ("last", "n_calls", "K)"))
                if "timesteps" in src or src == "ts" or chain_walk:
                    offenders.append(f"{f.relative_to(ROOT)}:{getattr(node, 'lineno', '?')}: for ... in {src}")
    assert not offenders, offenders


def test_functions_are_short():
    long = []
    for name, f in _modules():
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > 60:
                    long.append(f"{f.relative_to(ROOT)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, long


def _line_shapes(path: Path) -> list[tuple[int, str]]:
    """(line number, shape) of each line of code: its tokens with names, strings and numbers as placeholders, so
    that a block copied and renamed still matches; comments, blank lines and import statements left out."""
    src = path.read_text()
    imports = {n for node in ast.walk(ast.parse(src)) if isinstance(node, (ast.Import, ast.ImportFrom))
               for n in range(node.lineno, node.end_lineno + 1)}
    skip = {tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.COMMENT, tokenize.ENDMARKER}
    strings = {tokenize.STRING} | {getattr(tokenize, n) for n in ("FSTRING_START", "FSTRING_MIDDLE", "FSTRING_END")
                                   if hasattr(tokenize, n)}
    lines: dict[int, list[str]] = defaultdict(list)
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        if tok.type in skip or tok.start[0] in imports:
            continue
        word = tok.string
        if tok.type in strings:
            word = "S"
        elif tok.type == tokenize.NAME and not keyword.iskeyword(word):
            word = "I"
        elif tok.type == tokenize.NUMBER:
            word = "N"
        lines[tok.start[0]].append(word)
    return [(n, " ".join(words)) for n, words in sorted(lines.items())]


def test_no_block_of_six_lines_is_written_twice():
    """No six consecutive lines of code occur twice (in two places that do not overlap) in pdfast/ or kernels/,
    compared by shape (_line_shapes): a repeated block is a function or a table, written once."""
    width, seen = 6, defaultdict(list)
    for f in sorted(PKG.rglob("*.py")) + sorted((ROOT / "kernels").rglob("*.py")):
        shapes = _line_shapes(f)
        for k in range(len(shapes) - width + 1):
            block = tuple(shape for _, shape in shapes[k:k + width])
            seen[block].append((str(f.relative_to(ROOT)), shapes[k][0], shapes[k + width - 1][0]))
    twice = []
    for places in seen.values():
        twice += [f"{a[0]}:{a[1]}-{a[2]} and {b[0]}:{b[1]}-{b[2]}" for i, a in enumerate(places)
                  for b in places[i + 1:] if a[0] != b[0] or a[2] < b[1] or b[2] < a[1]][:1]
    assert not twice, twice


def test_cli_and_library_take_the_same_options_from_one_definition():
    """Every InversionConfig/DetectionConfig option is a flag of `pdfast invert` and `pdfast detect` and a keyword of
    pdfast.invert; the commands add only their own I/O flags; an unknown keyword is refused."""
    import pdfast
    from pdfast.cli import main
    from pdfast.config import DetectionConfig, InversionConfig, option_names
    from pdfast.errors import PdfastError

    names = option_names(InversionConfig, DetectionConfig)
    own = {"out", "model_path", "device", "as_json", "progress"}
    for cmd, extra in (("invert", set()), ("detect", {"trigger_spec", "fail_on_backdoor"})):
        params = {p.name for p in main.commands[cmd].params if isinstance(p, click.Option)} - {"help"}
        assert params == set(names) | own | extra, params ^ (set(names) | own | extra)
    from pdfast.api import split_options
    from pdfast.config import with_options

    inv, det = split_options({n: None for n in names})
    with_options(InversionConfig(), inv)
    with_options(DetectionConfig(), det)
    with pytest.raises(PdfastError, match="unknown option 'stepz'"):
        pdfast.invert(None, stepz=3)
    # the CLI's help is the field's help: one text
    help_text = {p.name: p.help for p in main.commands["invert"].params if isinstance(p, click.Option)}
    from dataclasses import fields

    for f in fields(InversionConfig):
        if "help" in f.metadata:
            assert help_text[f.metadata.get("cli") or f.name] == f.metadata["help"]
