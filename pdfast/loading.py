"""load_model: any local diffusers folder, UNet2DModel or eps-model callable -> a frozen DiffusionModel.

Everything is read by hand from local files: configs with ``json``, weights with ``safetensors`` or
``torch.load(weights_only=True)``. No ``from_pretrained``, no network, no code from the model folder, no writes.
"""
from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from .errors import PdfastError
from .model import DiffusionModel, from_callable
from .patterns import load_pattern
from .schedule import Schedule

WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
LATENT_KEYS = ("vae", "vqvae")


def load_model(source: Any, *, schedule: Schedule | Mapping | None = None, sample_size: int | None = None,
               channels: int = 3, device: str | torch.device = "cpu") -> DiffusionModel:
    """Resolve ``source`` into a frozen (eval, no grad) DiffusionModel on ``device``.

    ``source``: a diffusers pipeline folder (model_index.json, unet/, scheduler/), a bare UNet2DModel folder
    (config.json + weights, optional scheduler_config.json), a DiffusionModel, a UNet2DModel, or a callable
    ``fn(x, t) -> eps``. ``schedule`` (a Schedule or scheduler config dict) overrides the folder's scheduler
    config and is required for a plain callable; ``sample_size`` is checked against the config and required for a
    callable without ``.config``; ``channels`` is used for callables only (UNets take ``in_channels``).
    """
    device = _check_device(device)
    sched = _as_schedule(schedule)
    if isinstance(source, DiffusionModel):
        size = _resolve_size(source.sample_size, sample_size, "the DiffusionModel")
        model = source if sched is None else DiffusionModel(source.net, sched, size, source.channels, source.source,
                                                            source.backdoor, dict(source.extra))
        return model.to(device).frozen()
    if isinstance(source, (str, os.PathLike)):
        return _load_folder(Path(source).expanduser(), sched, sample_size, device)
    if not callable(source):
        raise PdfastError(f"cannot load a model from an object of type {type(source).__name__}; pass a model folder path, "
                          "a DiffusionModel, a UNet2DModel or a callable fn(x, t) -> eps")
    return _from_object(source, sched, sample_size, channels).to(device).frozen()


# ---------- in-memory sources ----------
def _from_object(net: Callable, sched: Schedule | None, sample_size: int | None, channels: int) -> DiffusionModel:
    """A UNet2DModel (config checked, default schedule with a warning) or a plain callable (schedule required)."""
    cfg = getattr(net, "config", None)
    name = type(net).__name__
    if isinstance(cfg, Mapping):
        cfg = dict(cfg)
        if type(net).__module__.startswith("diffusers"):
            cfg["_class_name"] = name
        where = f"the {name} config"
        _check_unet_config(cfg, where)
        size = _resolve_size(cfg.get("sample_size"), sample_size, where)
        if sched is None and _is_unet(net):
            sched = Schedule.default()
        channels = int(cfg.get("in_channels", channels))
    else:
        size = _resolve_size(None, sample_size, f"callable {name}")
    if sched is None:
        raise PdfastError(f"no schedule for callable {name}; pass schedule= (a pdfast Schedule or a scheduler config dict)")
    if _is_unet(net):
        return DiffusionModel(net, sched, size, channels, source=f"<{name}>")
    return from_callable(net, sched, size, channels)


def _is_unet(net: Any) -> bool:
    return type(net).__name__ == "UNet2DModel" and isinstance(net, torch.nn.Module)


# ---------- folders ----------
def _load_folder(path: Path, sched: Schedule | None, sample_size: int | None, device: torch.device) -> DiffusionModel:
    """Read a pipeline or bare UNet folder (see load_model); nothing in it is written or executed."""
    if not path.exists():
        raise PdfastError(f"missing model folder {path}; pass the folder written by save_pretrained or DiffusionModel.save")
    if not path.is_dir():
        hint = f" (pass its folder {path.parent})" if path.suffix in (".json", ".safetensors", ".bin") else ""
        raise PdfastError(f"{path} is a file, but a model folder is expected{hint}; pass the folder that holds "
                          "model_index.json or config.json")
    _check_readable(path)
    if (path / "model_index.json").is_file():
        index = _read_json(path / "model_index.json")
        _check_index(index, path)
        unet_dir, sched_file = path / "unet", path / "scheduler" / "scheduler_config.json"
        if not (unet_dir / "config.json").is_file():
            raise PdfastError(f"pipeline folder {path} is missing unet/config.json; re-save the pipeline with "
                              "save_pretrained (it must hold unet/ and scheduler/)")
        _check_readable(unet_dir)
    elif (path / "config.json").is_file():
        unet_dir, sched_file = path, path / "scheduler_config.json"
    else:
        raise PdfastError(f"missing config: {path} has neither model_index.json nor config.json; pass a diffusers "
                          "pipeline folder or a UNet2DModel folder written by save_pretrained")
    cfg = _read_json(unet_dir / "config.json")
    where = str(unet_dir / "config.json")
    _check_unet_config(cfg, where)
    size = _resolve_size(cfg.get("sample_size"), sample_size, where)
    if sched is None:
        if sched_file.is_file():
            try:
                sched = Schedule.from_config(_read_json(sched_file))
            except PdfastError as err:
                raise PdfastError(f"{sched_file}: {err}") from None
        else:
            sched = Schedule.default()
    net = _build_unet(cfg, unet_dir)
    backdoor = None
    if (path / "backdoor.json").is_file():
        backdoor = _read_json(path / "backdoor.json")
    model = DiffusionModel(net, sched, size, int(cfg.get("in_channels", 3)), source=str(path.resolve()), backdoor=backdoor)
    return model.to(device).frozen()


def _check_index(index: dict, path: Path) -> None:
    """Refuse latent, conditional and non-UNet2DModel pipelines from model_index.json alone."""
    if any(k in index for k in LATENT_KEYS) or any((path / k).is_dir() for k in LATENT_KEYS):
        raise PdfastError(f"latent diffusion models are not supported yet ({path} has a VAE); pdfast needs a "
                          "pixel-space DDPM pipeline (unet/ + scheduler/)")
    entry = index.get("unet")
    unet_cls = entry[-1] if isinstance(entry, (list, tuple)) and entry else None
    if "text_encoder" in index or (unet_cls and "Condition" in str(unet_cls)):
        raise PdfastError(f"conditional models are not supported yet ({unet_cls or 'text_encoder'} in "
                          f"{path / 'model_index.json'}); pdfast needs an unconditional UNet2DModel")
    if unet_cls is not None and unet_cls != "UNet2DModel":
        raise PdfastError(f"unet class '{unet_cls}' in {path / 'model_index.json'} is not supported; "
                          "pdfast loads UNet2DModel pipelines")


def _check_unet_config(cfg: Mapping, where: str) -> None:
    """Refuse configs pdfast cannot run: conditional, other classes, non-epsilon, in != out channels."""
    name = cfg.get("_class_name", "UNet2DModel")
    if ("Condition" in str(name) or cfg.get("class_embed_type") is not None
            or cfg.get("num_class_embeds") is not None):
        raise PdfastError(f"conditional models are not supported yet ({name} with class or text conditioning in "
                          f"{where}); pdfast needs an unconditional UNet2DModel")
    if name != "UNet2DModel":
        raise PdfastError(f"model class '{name}' in {where} is not supported; pdfast loads UNet2DModel folders "
                          "or eps-model callables")
    pred = cfg.get("prediction_type")
    if pred not in (None, "epsilon"):
        raise PdfastError(f"prediction_type '{pred}' in {where} is not supported; pdfast needs an epsilon-predicting model")
    cin, cout = cfg.get("in_channels", 3), cfg.get("out_channels", 3)
    if cin != cout:
        raise PdfastError(f"in_channels={cin} but out_channels={cout} in {where} (a learned-variance model?) is not "
                          "supported yet; pdfast needs an eps model with out_channels == in_channels")


def _resolve_size(cfg_size: Any, arg: Any, where: str) -> int:
    """The square side length: from the config, checked against the sample_size argument."""
    cfg_size, arg = _square(cfg_size, where), _square(arg, "sample_size=")
    if arg is not None:
        if cfg_size is not None and arg != cfg_size:
            raise PdfastError(f"mismatched sample size: sample_size={arg} but {where} says {cfg_size}; "
                              f"pass sample_size={cfg_size} or leave it out")
        return arg
    if cfg_size is None:
        raise PdfastError(f"no sample size known for {where}; pass sample_size=")
    return cfg_size


def _square(size: Any, where: str) -> int | None:
    if isinstance(size, (list, tuple)):
        if len(size) == 0 or len(set(size)) != 1:
            raise PdfastError(f"non-square sample size {list(size)} in {where} is not supported yet; "
                              "pdfast needs square images")
        size = size[0]
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise PdfastError(f"sample size {size!r} in {where} is not a positive integer")
    return size


# ---------- files ----------
def _build_unet(cfg: dict, unet_dir: Path) -> torch.nn.Module:
    """UNet2DModel.from_config, then load_state_dict(strict=True) from the weights read by _read_weights."""
    from diffusers import UNet2DModel

    try:
        net = UNet2DModel.from_config(cfg)
    except Exception as err:
        raise PdfastError(f"invalid UNet config {unet_dir / 'config.json'}: {_brief(err)}; re-save it with "
                          "save_pretrained") from None
    state, wfile = _read_weights(unet_dir)
    want = net.state_dict()
    missing, extra = sorted(set(want) - set(state)), sorted(set(state) - set(want))
    shapes = [k for k in want if k in state and tuple(state[k].shape) != tuple(want[k].shape)]
    if missing or extra or shapes:
        first = (missing or extra or shapes)[0]
        raise PdfastError(f"weights {wfile} do not match {unet_dir / 'config.json'}: {len(missing)} missing, "
                          f"{len(extra)} unexpected, {len(shapes)} wrong-shape tensors (e.g. '{first}'); "
                          "save the config and weights together with save_pretrained")
    try:
        net.load_state_dict(state, strict=True)
    except Exception as err:  # pragma: no cover - the key/shape check above catches the usual cases
        raise PdfastError(f"weights {wfile} do not match the config: {_brief(err)}") from None
    return net


def _read_weights(folder: Path) -> tuple[dict[str, torch.Tensor], Path]:
    """diffusion_pytorch_model.safetensors (preferred) or .bin via torch.load(weights_only=True)."""
    wfile = next((folder / n for n in WEIGHT_FILES if (folder / n).is_file()), None)
    if wfile is None:
        raise PdfastError(f"missing weights: {folder} has neither {' nor '.join(WEIGHT_FILES)}; save the UNet "
                          "with save_pretrained (sharded or variant weights are not supported yet)")
    try:
        if wfile.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(wfile), device="cpu")
        else:
            state = torch.load(wfile, map_location="cpu", weights_only=True)
    except PermissionError:
        raise PdfastError(f"cannot read weights {wfile} (permission denied); fix its permissions") from None
    except pickle.UnpicklingError:  # torch's own message suggests weights_only=False: never do that here
        raise PdfastError(f"corrupted or unsafe weights file {wfile}: not a plain tensor state dict (pdfast never "
                          "unpickles other objects); re-save it as safetensors where you trust its source") from None
    except Exception as err:
        raise PdfastError(f"corrupted or unsafe weights file {wfile} ({_brief(err)}); re-save it with "
                          "save_pretrained (safetensors preferred; .bin may only hold tensors)") from None
    if not isinstance(state, Mapping) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
        raise PdfastError(f"weights file {wfile} does not hold a state dict of tensors; re-save it with save_pretrained")
    return dict(state), wfile


def _read_json(path: Path) -> dict:
    """A JSON object from a config file, or a PdfastError naming the file."""
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except PermissionError:
        raise PdfastError(f"cannot read {path} (permission denied); fix its permissions") from None
    except (OSError, UnicodeDecodeError) as err:
        raise PdfastError(f"cannot read {path} ({_brief(err)})") from None
    except json.JSONDecodeError as err:
        raise PdfastError(f"invalid JSON config {path} (line {err.lineno}: {err.msg}); fix or re-save it") from None
    if not isinstance(obj, dict):
        raise PdfastError(f"invalid JSON config {path}: expected an object, got {type(obj).__name__}")
    return obj


def _check_readable(folder: Path) -> None:
    if not os.access(folder, os.R_OK | os.X_OK):
        raise PdfastError(f"cannot read model folder {folder} (permission denied); fix its permissions")


# ---------- small helpers ----------
def _as_schedule(schedule: Any) -> Schedule | None:
    if schedule is None or isinstance(schedule, Schedule):
        return schedule
    if isinstance(schedule, Mapping):
        return Schedule.from_config(schedule)
    raise PdfastError(f"schedule= must be a pdfast Schedule or a scheduler config dict, not {type(schedule).__name__}")


def _check_device(device: str | torch.device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise PdfastError(f"unknown device {device!r} ({_brief(err)}); use cpu or cuda") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise PdfastError(f"device {device!r} requested but CUDA is not available; use device='cpu'")
    return dev


def _brief(err: BaseException, limit: int = 160) -> str:
    """Exception type and the first line of its message, cut to ``limit`` characters."""
    msg = (str(err).strip().splitlines() or [""])[0]
    return f"{type(err).__name__}: {msg[:limit]}" if msg else type(err).__name__


# A backdoored model folder carries its true trigger and target (pdfast attack writes them beside the weights): the
# metrics that need the truth read them here, where model folders are read.
GROUND_TRUTH_FILE = "backdoor.safetensors"


def load_ground_truth(model: DiffusionModel) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(trigger, target) of a backdoored model folder: from backdoor.safetensors, else redrawn from backdoor.json names
    (the trigger as the x_T shift of the model's family)."""
    bd = model.backdoor
    if not bd:
        return None, None
    t = _truth_tensors(model)
    if t is not None:
        return t["trigger"].reshape(model.shape), t["target"].reshape(model.shape)
    from .families import family_of

    g = load_trigger_image(model)
    y = load_pattern(bd["target"], model.sample_size, model.channels, kind="target") if bd.get("target") else None
    return (None if g is None else family_of(model).shift(g)), y


def load_trigger_image(model: DiffusionModel) -> torch.Tensor | None:
    """The trigger as drawn (TrojDiff's image before mu = (1 - gamma) g): backdoor.safetensors' "trigger_image",
    else redrawn from backdoor.json's name; None for a model without ground truth."""
    bd = model.backdoor or {}
    t = _truth_tensors(model) if bd else None
    if t is not None and "trigger_image" in t:
        return t["trigger_image"].reshape(model.shape)
    if not bd.get("trigger"):
        return None
    return load_pattern(bd["trigger"], model.sample_size, model.channels, kind="trigger")


def _truth_tensors(model: DiffusionModel) -> dict | None:
    """backdoor.safetensors of a model folder (None when absent); unreadable is one PdfastError line."""
    f = Path(str(model.source)) / model.backdoor.get("ground_truth_file", GROUND_TRUTH_FILE)
    if not f.is_file():
        return None
    from safetensors.torch import load_file

    try:
        return load_file(str(f))
    except Exception as e:  # noqa: BLE001
        raise PdfastError(f"cannot read the ground truth {f}: {e}; delete it to redraw from backdoor.json") from None
