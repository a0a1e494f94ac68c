"""Which models a scan covers: the PATH arguments of `pdfast scan` resolved into model folders, each with a name, a
revision (Hugging Face cache snapshots) and a content hash (the key a finished row is found again by).

A PATH is a model folder, a folder of model folders (searched recursively), a text file listing such paths (one a
line, '#' comments, relative to the file's folder) or a local Hugging Face cache folder (its
``models--org--name/snapshots/<revision>/`` layout, read as it lies: nothing is downloaded). A leaf folder that is not
a model is kept as a candidate too, so that it gets a row saying why it is not one.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from ..errors import PdfastError

MODEL_MARKERS = ("model_index.json", "config.json")
WEIGHT_SUFFIXES = (".safetensors", ".bin")
HF_MODEL_PREFIX = "models--"
SCAN_DB = "scan.db"
HF_OTHER_PREFIXES = ("datasets--", "spaces--")  # cached data sets and spaces are not models
PATH_HELP = ("pass a model folder, a folder of model folders, a text file listing paths, or a Hugging Face cache "
             "folder")


@dataclass(frozen=True)
class Candidate:
    """One folder to scan: its display name, path, revision (Hugging Face snapshots, else None) and content hash."""

    name: str
    path: str
    revision: str | None
    content_hash: str


def discover(paths) -> list[Candidate]:
    """The candidates of the PATH arguments, in order, each folder once; a PATH that does not exist is a
    PdfastError (checked for all before any is searched)."""
    roots = [Path(p).expanduser() for p in paths]
    if not roots:
        raise PdfastError(f"no PATH given; {PATH_HELP}")
    for root in roots:
        if not root.exists():
            raise PdfastError(f"PATH {root} does not exist; {PATH_HELP}")
    found: dict[str, tuple[str, Path, str | None]] = {}
    for root in roots:
        for name, folder, rev in _from_root(root):
            found.setdefault(str(folder.resolve()) if folder.exists() else str(folder), (name, folder, rev))
    return [Candidate(name, str(folder), rev, content_hash(folder)) for name, folder, rev in found.values()]


def _from_root(root: Path):
    """(name, folder, revision) of one PATH argument: a list file's entries, or the folders under a folder."""
    if root.is_dir():
        yield from _walk(root, root.parent)
        return
    for entry in _listed(root):
        if entry.is_dir():
            yield from _walk(entry, entry.parent)
        else:  # missing or a file: kept, its row says what is wrong
            yield str(entry), entry, None


def _listed(listing: Path) -> list[Path]:
    """The paths a text file lists (one a line; blank lines and '#' comments skipped; relative to its folder)."""
    if listing.suffix.lower() in WEIGHT_SUFFIXES + (".json",):
        raise PdfastError(f"PATH {listing} is a model file; pass its folder {listing.parent}")
    try:
        text = listing.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise PdfastError(f"PATH {listing} is a file but not a text list of paths; {PATH_HELP}") from None
    except OSError as err:
        raise PdfastError(f"cannot read PATH {listing} ({err.strerror}); fix its permissions") from None
    lines = [ln.strip() for ln in text.splitlines()]
    return [(listing.parent / Path(ln).expanduser()) for ln in lines if ln and not ln.startswith("#")]


def _walk(folder: Path, base: Path):
    """(name, folder, revision) of every model folder under ``folder`` (itself included), and of every leaf folder
    that is not one; hidden folders, cached data sets and scan folders are skipped, a Hugging Face repo gives its
    snapshots."""
    if (folder / SCAN_DB).is_file():  # a scan's own output folder (say --out inside PATH): not models
        return
    if folder.name.startswith(HF_MODEL_PREFIX) and (folder / "snapshots").is_dir():
        yield from _snapshots(folder)
        return
    if is_model_folder(folder):
        yield _hf_name(folder) or _rel(folder, base), folder, _hf_revision(folder)
        return
    try:
        subs = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")
                      and not d.name.startswith(HF_OTHER_PREFIXES))
    except OSError:
        subs = []
    if not subs:
        yield _rel(folder, base), folder, None
    for sub in subs:
        yield from _walk(sub, base)


def _snapshots(repo: Path):
    """(org/name@revision, snapshot folder, revision) of each snapshot of a cached Hugging Face model repo."""
    snaps = sorted(d for d in (repo / "snapshots").iterdir() if d.is_dir())
    if not snaps:  # an interrupted download: a row says it holds no model
        yield _repo_id(repo), repo, None
    for snap in snaps:
        yield f"{_repo_id(repo)}@{snap.name}", snap, snap.name


def _repo_id(repo: Path) -> str:
    """'org/name' of a cache folder 'models--org--name' (the hub writes '/' as '--')."""
    return repo.name[len(HF_MODEL_PREFIX):].replace("--", "/")


def _hf_name(folder: Path) -> str | None:
    """org/name@revision when ``folder`` is a snapshot inside a Hugging Face cache, else None."""
    rev = _hf_revision(folder)
    return f"{_repo_id(folder.parent.parent)}@{rev}" if rev else None


def _hf_revision(folder: Path) -> str | None:
    """The snapshot's revision when ``folder`` is models--org--name/snapshots/<revision>, else None."""
    parent = folder.parent
    if parent.name == "snapshots" and parent.parent.name.startswith(HF_MODEL_PREFIX):
        return folder.name
    return None


def _rel(folder: Path, base: Path) -> str:
    """The folder's name relative to ``base`` (posix), or its full path outside it."""
    try:
        return folder.relative_to(base).as_posix() or folder.name
    except ValueError:
        return folder.as_posix()


def is_model_folder(folder: Path) -> bool:
    """A folder that claims to be a model: a config (pipeline or UNet) or weights directly inside it."""
    try:
        return any((folder / m).is_file() for m in MODEL_MARKERS) or any(
            f.suffix in WEIGHT_SUFFIXES for f in folder.iterdir() if f.is_file())
    except OSError:
        return False


def content_hash(folder: Path) -> str:
    """sha256 of the folder's files (relative names and bytes, hidden ones skipped), so a copy or a re-download of
    the same model is the same model; a folder without weights (or unreadable) is keyed by its path instead."""
    try:
        files = sorted(f for f in folder.rglob("*") if f.is_file()
                       and not any(p.startswith(".") for p in f.relative_to(folder).parts))
        if not any(f.suffix in WEIGHT_SUFFIXES for f in files):
            raise OSError("no weights")
        h = hashlib.sha256()
        for f in files:
            h.update(f.relative_to(folder).as_posix().encode() + b"\0")
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
            h.update(b"\0")
        return h.hexdigest()
    except OSError:
        return "path-" + hashlib.sha256(str(folder.resolve()).encode()).hexdigest()
