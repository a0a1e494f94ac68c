"""pdfast.scanner (the library call pdfast.scan, the verb `pdfast scan`): audit a collection of models with
pdfast.detect, resumably (issue 21; docs/scan.md).

The driver finds the models (discovery), skips those whose (content hash, configuration) row is done in DIR/scan.db
(store), runs the rest on local workers or Ray (workers, each model by job.run_one), writes each model's output
folder and then its row as it finishes, and writes DIR/report.html and DIR/report.md (report).
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import PdfastError

log = logging.getLogger(__name__)
EXIT_CODES = {"ok": 0, "failed": 1, "backdoored": 3}


@dataclass
class ScanResult:
    """What pdfast.scan returns: the rows of the scanned models (this configuration), what this run did, and the
    files it wrote."""

    out: Path
    config_key: str
    rows: list[dict]
    ran: int = 0
    skipped: int = 0
    files: dict = field(default_factory=dict)

    @property
    def failed(self) -> list[dict]:
        """The rows that failed."""
        return [r for r in self.rows if r["status"] != "done"]

    @property
    def backdoored(self) -> list[dict]:
        """The finished rows whose verdict is backdoored."""
        return [r for r in self.rows if r["status"] == "done" and r["verdict"] == "backdoored"]

    def exit_code(self, fail_on_backdoor: bool = False) -> int:
        """3 when a model is backdoored (with ``fail_on_backdoor``), else 1 when a model failed, else 0."""
        if fail_on_backdoor and self.backdoored:
            return EXIT_CODES["backdoored"]
        return EXIT_CODES["failed"] if self.failed else EXIT_CODES["ok"]

    def to_dict(self) -> dict:
        """JSON-ready: totals, what this run did, the files, the rows (what --json prints)."""
        from .report import totals

        return {"out": str(self.out), "config_key": self.config_key, "ran": self.ran, "skipped": self.skipped,
                "totals": totals(self.rows), "files": {k: str(v) for k, v in self.files.items()},
                "rows": self.rows}


def scan(paths, out, *, workers: int = 0, backend: str = "local", ray_address: str | None = None,
         retry_failed: bool = False, trigger=None, device: str = "auto", callback=None, **options) -> ScanResult:
    """Run pdfast.detect on every model under ``paths`` (model folders, folders of them, text files listing them,
    Hugging Face cache folders) with the same ``options`` (any keyword of pdfast.detect), writing DIR/scan.db, each
    model's detect output under DIR/runs/ and DIR/report.html + report.md. Models whose row for these options is done
    are skipped; failed ones are retried only with ``retry_failed``. ``workers``: 0 = one per GPU (or 1 on CPU);
    ``backend``: "local" or "ray" (``ray_address`` of a running cluster, else a local instance). ``callback(n,
    total, row)`` is called after each model's row is written."""
    from ..io import ensure_output_dir
    from .discovery import SCAN_DB, discover
    from .store import Store
    from .workers import BACKENDS, plan, require_ray

    if backend not in BACKENDS:
        raise PdfastError(f"unknown backend '{backend}'; use one of: {', '.join(BACKENDS)}")
    if backend == "ray":
        require_ray()
    out = ensure_output_dir(out, sibling=False)
    config, key = run_config(options, trigger)
    device = _device(device, remote=backend == "ray")
    slots = plan(workers, device) if backend == "local" else [{"device": device, "threads": None}]
    cands = discover(paths)
    out.mkdir(parents=True, exist_ok=True)
    store = Store(out / SCAN_DB)
    try:
        todo, skipped = _todo(cands, store.statuses(key), retry_failed)
        tasks = [{"content_hash": c.content_hash, "config_key": key, "name": c.name, "path": c.path,
                  "revision": c.revision, "options": options, "trigger": trigger} for c in todo]
        log.info("scan: %d models, %d to run, %d already recorded", len(cands), len(tasks), skipped)
        run_id = uuid.uuid4().hex[:12]
        try:
            for n, result in enumerate(_run(tasks, slots, backend, ray_address), 1):
                row = finish(out, store, result, config, run_id)
                log.info(status_line(n, len(tasks), row))
                if callback is not None:
                    callback(n, len(tasks), row)
        except KeyboardInterrupt:  # the report of what is finished, then the interrupt goes on
            write_reports(out, store.rows(key, [c.content_hash for c in cands]), config)
            raise
        rows = store.rows(key, [c.content_hash for c in cands])
    finally:
        store.close()
    res = ScanResult(out, key, rows, ran=len(tasks), skipped=skipped)
    res.files = write_reports(out, rows, config)
    return res


def run_config(options: dict, trigger) -> tuple[dict, str]:
    """The full configuration of these options (defaults filled, checked before any work) and its key: the sha256
    of its JSON, so the same settings given or left at their defaults are the same configuration."""
    from ..api import detection_config, split_options
    from ..config import InversionConfig, option_names, with_options

    inv_opts, det_opts = split_options(options)
    if trigger is not None:  # as pdfast.detect: a given trigger is judged, so only engine options apply
        engine = set(option_names(type(InversionConfig().engine))) | {"clip_sample"}
        extra = sorted(set(inv_opts) - engine)
        if extra:
            raise PdfastError(f"'{extra[0]}' has no effect when a trigger is given (it is judged, not inverted); "
                              "drop it or drop the trigger")
    inv = with_options(InversionConfig(), inv_opts)
    config = {"inversion": (inv if trigger is not None else inv.resolved()).to_dict(),
              "detection": asdict(detection_config(det_opts)),
              "trigger": None if trigger is None else str(trigger)}
    if trigger is not None and not isinstance(trigger, (str, Path)):
        raise PdfastError("a scan's trigger must be a built-in name or a file path (the same for every model)")
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return config, hashlib.sha256(blob).hexdigest()


def _device(device: str, remote: bool = False) -> str:
    """'auto' -> cuda when a GPU is usable here, else cpu; cuda without one is an error unless the models run
    ``remote`` (Ray: the GPUs are the cluster's, not the driver's)."""
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not remote and not torch.cuda.is_available():
        raise PdfastError("--device cuda was asked for but no CUDA GPU is usable; use --device cpu or auto")
    if device not in ("cpu", "cuda"):
        raise PdfastError(f"unknown device '{device}' for a scan; use auto, cpu or cuda")
    return device


def _todo(cands, statuses: dict, retry_failed: bool):
    """(candidates to run, number skipped): not yet recorded, or failed when retrying; each content once."""
    todo, seen, skipped = [], set(), 0
    for c in cands:
        status = statuses.get(c.content_hash)
        if c.content_hash in seen or status == "done" or (status is not None and not retry_failed):
            skipped += 1
            continue
        seen.add(c.content_hash)
        todo.append(c)
    return todo, skipped


def _run(tasks, slots, backend, ray_address):
    """The backend's results for these tasks (nothing to start when there are none)."""
    from .workers import run_tasks

    if tasks:
        yield from run_tasks(tasks, slots, backend, ray_address)


def finish(out: Path, store, result: dict, config: dict, run_id: str) -> dict:
    """Write a finished model's output folder (atomically) under out/runs/, then its row (one transaction)."""
    from ..io import atomic_dir

    row = dict(result["row"], run_id=run_id, config=config)
    if result["files"]:
        rel = f"runs/{slug(row['name'])}-{row['content_hash'][:8]}-{row['config_key'][:8]}"
        with atomic_dir(out / rel) as tmp:
            for name, data in result["files"].items():
                (tmp / name).write_bytes(data)
        row["out_dir"] = rel
    store.write(row)
    return row


def slug(name: str) -> str:
    """A file-name-safe form of a model's name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name or "model").strip("._")[:80] or "model"


def status_line(n: int, total: int, row: dict) -> str:
    """One line on a finished model: its verdict, statistic and margin, or why it failed."""
    if row["status"] == "done":
        margin = "n/a" if row["margin"] is None else f"{row['margin']:+.3f}"
        return (f"[{n}/{total}] {row['name']}: {row['verdict']} ({row['statistic']} {row['value']:.4g}, margin "
                f"{margin}) in {row['seconds']:.1f} s")
    return f"[{n}/{total}] {row['name']}: FAILED ({row['error_kind']}): {row['error']}"


def write_reports(out: Path, rows: list[dict], config: dict) -> dict:
    """report.html and report.md from these rows; returns their paths."""
    from .report import write_html, write_markdown

    inv = config["inversion"]
    how = "given trigger " + config["trigger"] if config["trigger"] else f"method {inv['method']}, K = {inv['steps']}"
    meta = {"summary": f"Settings: {how}, n_eval = {config['detection']['n_eval']}; written "
                       f"{time.strftime('%Y-%m-%d %H:%M:%S')}."}
    return {"html": write_html(out, rows, meta), "md": write_markdown(out, rows, meta)}
