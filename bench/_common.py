"""Shared helpers for the bench scripts: environment header, result file naming, markdown tables."""
from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def header() -> dict:
    from pdfast.envinfo import environment

    return {"date": dt.date.today().isoformat(), "environment": environment()}


def device_slug(env: dict) -> str:
    return re.sub(r"[^a-z0-9]+", "-", str(env["device"]).lower()).strip("-")


def write(name: str, obj: dict, table: str) -> tuple[Path, Path]:
    """Write bench/results/<name>.json and .md (the markdown table with the environment above it)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    j, m = RESULTS / f"{name}.json", RESULTS / f"{name}.md"
    j.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    env = obj.get("environment", {})
    m.write_text(f"# {name}\n\n{obj.get('date', '')}; device {env.get('device')}; torch {env.get('torch')}; "
                 f"diffusers {env.get('diffusers')}; pdfast {env.get('pdfast')}\n\n"
                 f"Command: `{obj.get('command', '')}`\n\n{table}\n")
    return j, m


def md_table(rows: list[dict], cols: list[str]) -> str:
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.4g}"
        return "" if v is None else str(v)

    out = ["| " + " | ".join(cols) + " |", "| " + " | ".join("---" for _ in cols) + " |"]
    out += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(out)
