"""The model zoo as the scorer sees it: the built models (recipe order, split, kind), their content hashes and
their ground truth."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .base import log, sha, write_json


@dataclass
class ZooModel:
    """A built model: its folder, split, kind, recipe entry and zoo.json; hash is filled in by model_hash."""
    name: str
    path: Path
    split: str
    kind: str
    backdoored: bool
    recipe: dict
    zoo: dict
    order: int = 0
    hash: str | None = None


def scan_zoo(zoo: Path, recipe: Path | None = None) -> list[ZooModel]:
    """Every built model (a folder with zoo.json), in recipe order when the recipe lists them, else by name; a model
    the zoo build rejected (a gated backdoor that never reached the recipe's strength) is not part of the zoo."""
    order = {}
    if recipe is not None and recipe.is_file():
        order = {m["name"]: i for i, m in enumerate(json.loads(recipe.read_text()).get("models", []))}
    out = []
    for d in sorted(zoo.iterdir()) if zoo.is_dir() else []:
        zj = d / "zoo.json"
        if not zj.is_file():
            continue
        try:
            info = json.loads(zj.read_text())
        except (OSError, ValueError):
            continue
        if info.get("rejected"):
            log(f"{d.name}: left out, rejected by the zoo build: {info['rejected']}")
            continue
        rec = info.get("recipe", {})
        bd = (d / "backdoor.json").is_file()
        out.append(ZooModel(d.name, d, rec.get("split", "?"), rec.get("kind", "?"), bd, rec, info,
                            order.get(d.name, 10_000)))
    out.sort(key=lambda m: (m.order, m.name))
    return out


def model_hash(m: ZooModel, cache: Path) -> str:
    """pdfast's content hash of the model (weights + schedule), cached by the folder's file sizes and mtimes."""
    if m.hash:
        return m.hash
    sig = sha(sorted((str(f.relative_to(m.path)), f.stat().st_size, f.stat().st_mtime_ns)
                     for f in m.path.rglob("*") if f.is_file() and f.name != "zoo.json"))
    store = cache / "model-hashes.json"
    try:
        known = json.loads(store.read_text())
    except (OSError, ValueError):
        known = {}
    hit = known.get(str(m.path.resolve()))
    if hit and hit.get("sig") == sig:
        m.hash = hit["hash"]
        return m.hash
    from pdfast.loading import load_model

    m.hash = load_model(m.path).content_hash()
    known[str(m.path.resolve())] = {"sig": sig, "hash": m.hash}
    write_json(store, known)
    return m.hash


def schedule_T(m: ZooModel) -> int:
    """The model's number of diffusion steps T (1000 when its scheduler config does not say)."""
    try:
        return int(json.loads((m.path / "scheduler" / "scheduler_config.json").read_text())["num_train_timesteps"])
    except (OSError, ValueError, KeyError):
        return 1000


def sample_size(m: ZooModel) -> int | None:
    """The model's image size (its UNet config), None when unreadable."""
    for f in (m.path / "unet" / "config.json", m.path / "config.json"):
        try:
            return int(json.loads(f.read_text())["sample_size"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return None


def truth_tensors(m: ZooModel):
    """(g, y) from the model folder's backdoor.safetensors (pdfast.attack.save_backdoored), or (None, None)."""
    from safetensors.torch import load_file

    from pdfast.loading import GROUND_TRUTH_FILE

    f = m.path / GROUND_TRUTH_FILE
    if not m.backdoored or not f.is_file():
        return None, None
    t = load_file(str(f))
    return t["trigger"], t["target"]


def quality_footprint_share(g) -> float:
    """Share of the pixels in the true trigger's footprint (g != -1 in any channel)."""
    return float((g != -1).any(dim=0).float().mean())
