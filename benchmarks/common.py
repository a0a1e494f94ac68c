"""Shared helpers of the benchmarks (sweep.py, test_bench_engine.py, profile_inversion.py, readme_job.py,
compare_engines.py): the model under test, one iteration's inputs, timing, result files.

One inversion iteration = the chain of K DDPM steps from x_T = noise + delta, the shift loss on the last step, and
the backward pass to delta (docs/method.md section 9). Presets are data; every result file echoes its config, the device
and the versions.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path

import torch

from pdfast.model import DiffusionModel
from pdfast.schedule import Schedule
from pdfast.train import make_unet


def build_model(arch: str, size: int, device: str) -> DiffusionModel:
    """A frozen eps-model of a pdfast.train preset with random weights (same cost as trained ones), BadDiffusion's
    sampler settings (linear schedule, T = 1000, clip_sample false)."""
    net = make_unet(arch, size)
    schedule = Schedule.from_config({"clip_sample": False})
    return DiffusionModel(net, schedule, sample_size=size, source=f"<random {arch} {size}px>").frozen().to(device)


def add_model_options(p) -> None:
    """The options that pick the model under test, shared by the engine benchmarks (sweep.py, fused_engine.py):
    --device, --arch (a pdfast.train.make_unet preset), --size and --batch."""
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--arch", choices=["cifar10", "small", "demo", "tiny"], default="cifar10",
                   help="pdfast.train.make_unet preset (cifar10 = google/ddpm-cifar10-32, 35.7M parameters)")
    p.add_argument("--size", type=int, default=32, help="image size in pixels")
    p.add_argument("--batch", type=int, default=40)


def chain_inputs(model: DiffusionModel, batch: int, k: int, seed: int = 0) -> dict:
    """Noise batch, per-step DDPM noise, the Elijah init delta = -U(0, 1), the DDPM sampler over K steps and eq. 17
    (L1) over the analytic scales; loss on step K."""
    from pdfast.chain import DDPMSampler
    from pdfast.objectives import ShiftObjective

    g = torch.Generator().manual_seed(seed)
    dev = model.device
    shape = model.shape
    noise = torch.randn(batch, *shape, generator=g).to(dev)
    zs = [torch.randn(batch, *shape, generator=g).to(dev) for _ in range(k)]
    delta = (-torch.rand(*shape, generator=g)).to(dev)
    return dict(delta=delta, noise=noise, zs=zs, sampler=DDPMSampler(model.schedule, k),
                objective=ShiftObjective(model.schedule.analytic_scales(k).tolist(), "l1"), loss_steps=[k - 1])


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device) -> tuple[float, object]:
    """(seconds, result) of fn() with the device synchronised before and after."""
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - start, out


def median(xs):
    return statistics.median(xs) if xs else None


def adam_loss(engine, inp: dict, iters: int, lr: float = 0.1) -> tuple[float, float]:
    """(loss at the init, loss after `iters` Adam steps) on delta: do two engines optimise the same thing?"""
    delta = inp["delta"].detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([delta], lr=lr)
    args = {k: v for k, v in inp.items() if k != "delta"}
    first = None
    for _ in range(iters):
        loss, grad = engine.loss_and_grad(delta.detach(), **args)
        first = loss if first is None else first
        delta.grad = grad
        opt.step()
    final, _ = engine.loss_and_grad(delta.detach(), **args)
    return (first if first is not None else final), final


def device_name(device: str) -> str:
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"cpu {model} ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)".strip()


def device_slug(device: str) -> str:
    """'nvidia-h200', 'cpu-intel-xeon-...': file-name safe, short."""
    if torch.device(device).type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = "cpu " + device_name(device).split("(")[0].removeprefix("cpu ")
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower().replace("(r)", "").replace("(tm)", "")).strip("-")
    return slug[:48].strip("-")


def environment() -> dict:
    from pdfast.envinfo import environment as env

    return env()


def today() -> str:
    return _dt.date.today().isoformat()


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    tmp.replace(path)


def gib(nbytes) -> str:
    return "-" if nbytes is None else f"{nbytes / 2**30:.3f} GiB" if nbytes >= 2**27 else f"{nbytes / 2**20:.2f} MiB"

RESULTS = Path(__file__).resolve().parent / "results"

# ---- result files of the scripts (compare_engines, profile_inversion, readme_job)


def header() -> dict:
    """Date and pdfast.envinfo.environment() for the top of a result file."""
    from pdfast.envinfo import environment as _env

    return {"date": _dt.date.today().isoformat(), "environment": _env()}


def write(name: str, obj: dict, table: str) -> tuple[Path, Path]:
    """Write benchmarks/results/<name>.json and .md (the markdown table with the environment above it)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    j, m = RESULTS / f"{name}.json", RESULTS / f"{name}.md"
    j.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    env = obj.get("environment", {})
    m.write_text(f"# {name}\n\n{obj.get('date', '')}; device {env.get('device')}; torch {env.get('torch')}; "
                 f"diffusers {env.get('diffusers')}; pdfast {env.get('pdfast')}\n\n"
                 f"Command: `{obj.get('command', '')}`\n\n{table}\n")
    return j, m


def publish(script: str, stem: str, argv: list[str] | None, table: str, **data) -> None:
    """Write benchmarks/results/<stem>-<device>.json/.md (``write``) with the command that made them (``script``
    and its arguments, ``argv`` or the process's) and ``data``, then print the table."""
    cmd = f"python benchmarks/{script} " + " ".join(sys.argv[1:] if argv is None else argv)
    write(f"{stem}-{device_slug('cpu')}", {**header(), "command": cmd, **data}, table)
    print(table)


def md_table(rows: list[dict], cols: list[str]) -> str:
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.4g}"
        return "" if v is None else str(v)

    out = ["| " + " | ".join(cols) + " |", "| " + " | ".join("---" for _ in cols) + " |"]
    out += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(out)
