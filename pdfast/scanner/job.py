"""One model of a scan, run wherever a worker is (the driver itself, a local worker process or a Ray task):
pdfast.detect on the folder, its usual output files read back as bytes, and its row. Nothing here writes into the
scan folder: the driver alone does (pdfast.scanner.store), so a worker on another machine needs no shared disk for it.

Any failure becomes a failed row: bad input (a PdfastError: not a model, truncated weights, unsupported kind) with
its one-line message, anything else with its type and first line."""
from __future__ import annotations

import datetime as _dt
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path


def now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def run_one(task: dict) -> dict:
    """Detect on ``task["path"]`` with the scan's options; returns {"row": the row's fields, "files": {name: bytes}
    of the output folder (empty when it failed)}. Ctrl-C (KeyboardInterrupt) is not caught."""
    import torch

    from ..api import detect
    from ..errors import PdfastError

    if task.get("threads"):
        torch.set_num_threads(int(task["threads"]))
    row = {k: task[k] for k in ("content_hash", "config_key", "name", "path", "revision")}
    row.update(started=now(), worker=f"{platform.node()}:{os.getpid()}", device=task["device"])
    t0, files = time.perf_counter(), {}
    try:
        res = detect(task["path"], trigger=task.get("trigger"), device=task["device"], **task["options"])
        if res.inversion.interrupted:
            raise KeyboardInterrupt
        row.update(measures(res), status="done")
        files = output_files(res)
    except PdfastError as err:
        row.update(status="failed", error_kind="bad-input", error=str(err))
    except Exception as err:  # noqa: BLE001 - any failure of one model is its row, the scan goes on
        row.update(status="failed", error_kind="error", error=brief(err))
    row.update(seconds=round(time.perf_counter() - t0, 3), finished=now())
    return {"row": row, "files": files}


def brief(err: BaseException) -> str:
    """'Type: first line of the message' of an unexpected error, one line."""
    msg = (str(err).strip().splitlines() or [""])[0][:300]
    return f"{type(err).__name__}: {msg}" if msg else type(err).__name__


def measures(res) -> dict:
    """The row's fields of a finished detection: verdict, statistic, margin, ASR and fidelity (where the model
    carries its ground truth), timings, device, versions, model hash."""
    from ..metrics import fidelity

    rep = res.to_dict()
    m, env = rep["metrics"], rep["environment"]
    det = m["detection"]
    gt = res.inversion.ground_truth
    return {"verdict": det["verdict"], "statistic": det["statistic"], "value": det["value"],
            "threshold": det["threshold"], "margin": det["margin"], "asr": m.get("asr"),
            "pattern_asr": m.get("pattern_asr"), "l2": m.get("l2"),
            "pattern_cos": fidelity(res.trigger, gt)["pattern_cos"] if gt is not None else None,
            "model_hash": rep["model"]["content_hash"], "timings": rep["timings"], "device": env["device"],
            "versions": {k: env.get(k) for k in ("pdfast", "torch", "diffusers", "python", "platform")}}


def output_files(res) -> dict[str, bytes]:
    """The files `pdfast detect --out` writes for this result, as {name: bytes}."""
    tmp = Path(tempfile.mkdtemp(prefix="pdfast-scan-"))
    try:
        res.save(tmp / "out")
        return {f.name: f.read_bytes() for f in sorted((tmp / "out").iterdir()) if f.is_file()}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def crashed(task: dict, why: str) -> dict:
    """The failed row of a model whose worker died (or whose Ray task was lost) before it answered."""
    row = {k: task[k] for k in ("content_hash", "config_key", "name", "path", "revision")}
    row.update(status="failed", error_kind="worker-died", error=why, device=task["device"], started=None,
               finished=now())
    return {"row": row, "files": {}}
