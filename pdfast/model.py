"""DiffusionModel: an epsilon network plus its schedule, the one object every pdfast job takes."""
from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from .schedule import Schedule


@dataclass
class DiffusionModel:
    """An unconditional eps-prediction model: ``eps(x_t, t)`` and its DDPM ``schedule``.

    ``net`` is a diffusers ``UNet2DModel`` or any callable ``net(x, t) -> eps`` (t a tensor).
    ``backdoor`` holds the ground truth of ``backdoor.json`` when the model folder has one.
    """

    net: Any
    schedule: Schedule
    sample_size: int
    channels: int = 3
    source: str = "<python>"
    backdoor: dict | None = None
    extra: dict = field(default_factory=dict)

    # ---------- evaluation ----------
    def eps(self, x: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        """eps_theta(x_t, t); t is passed to the network as a tensor (one compiled graph for every t)."""
        if not torch.is_tensor(t):
            t = torch.tensor(t, device=x.device, dtype=torch.long)
        out = self.net(x, t)
        return out.sample if hasattr(out, "sample") else out

    __call__ = eps

    @property
    def is_unet(self) -> bool:
        return isinstance(self.net, torch.nn.Module) and hasattr(self.net, "config") and hasattr(self.net, "save_pretrained")

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, self.sample_size, self.sample_size)

    @property
    def device(self) -> torch.device:
        if isinstance(self.net, torch.nn.Module):
            for p in self.net.parameters():
                return p.device
        return torch.device("cpu")

    def to(self, device: str | torch.device) -> "DiffusionModel":
        if isinstance(self.net, torch.nn.Module):
            self.net.to(device)
        return self

    def copy(self) -> "DiffusionModel":
        """A deep copy whose network can be trained without touching this one."""
        return DiffusionModel(copy.deepcopy(self.net), self.schedule, self.sample_size, self.channels,
                              self.source, copy.deepcopy(self.backdoor), dict(self.extra))

    def frozen(self) -> "DiffusionModel":
        """Eval mode with requires_grad off: gradients flow to the input only (backward costs one forward, not two)."""
        if isinstance(self.net, torch.nn.Module):
            self.net.eval().requires_grad_(False)
        return self

    # ---------- identity ----------
    def content_hash(self) -> str:
        """sha256 (first 16 hex) of the weights and schedule: the cache key for calibrated scales."""
        if "content_hash" in self.extra:
            return self.extra["content_hash"]
        h = hashlib.sha256()
        h.update(json.dumps(self.schedule.to_config(), sort_keys=True, default=str).encode())
        h.update(str(self.shape).encode())
        if isinstance(self.net, torch.nn.Module):
            for name, v in sorted(self.net.state_dict().items()):
                h.update(name.encode())
                h.update(v.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
        else:
            h.update(repr(self.net).encode())
        digest = h.hexdigest()[:16]
        self.extra["content_hash"] = digest
        return digest

    def invalidate_hash(self) -> None:
        self.extra.pop("content_hash", None)

    # ---------- saving ----------
    def save(self, out: str | Path, backdoor: dict | None = None) -> Path:
        """Write a diffusers pipeline folder (model_index.json, unet/, scheduler/) and backdoor.json if given."""
        from .io import atomic_dir

        if not self.is_unet:
            from .errors import PdfastError
            raise PdfastError("only diffusers UNet2DModel networks can be saved as a model folder")
        out = Path(out)
        with atomic_dir(out) as tmp:
            self.net.save_pretrained(tmp / "unet", safe_serialization=True)
            (tmp / "scheduler").mkdir()
            (tmp / "scheduler" / "scheduler_config.json").write_text(json.dumps(self.schedule.to_config(), indent=2))
            (tmp / "model_index.json").write_text(json.dumps({
                "_class_name": "DDPMPipeline", "_diffusers_version": _diffusers_version(),
                "scheduler": ["diffusers", "DDPMScheduler"], "unet": ["diffusers", "UNet2DModel"]}, indent=2))
            bd = backdoor if backdoor is not None else self.backdoor
            if bd is not None:
                (tmp / "backdoor.json").write_text(json.dumps(bd, indent=2))
        return out


def _diffusers_version() -> str:
    try:
        import diffusers
        return diffusers.__version__
    except Exception:  # pragma: no cover
        return "unknown"


def from_callable(fn: Callable, schedule: Schedule, sample_size: int, channels: int = 3) -> DiffusionModel:
    """Wrap a plain eps-model callable ``fn(x, t) -> eps`` with its schedule."""
    return DiffusionModel(fn, schedule, int(sample_size), int(channels), source=f"<callable {getattr(fn, '__name__', type(fn).__name__)}>")
