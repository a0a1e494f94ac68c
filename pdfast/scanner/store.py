"""The scan's database, DIR/scan.db (SQLite, WAL): one row per model and configuration, keyed by (content_hash,
config_key), written in one transaction when a model is finished (after its output folder is complete), so a killed
scan leaves whole rows only and a rerun finds them again. Only the driver process writes it."""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path

SCHEMA_VERSION = 1
COLUMNS = {  # name -> SQL type; the row dicts of pdfast.scanner.job carry these keys
    "content_hash": "TEXT NOT NULL", "config_key": "TEXT NOT NULL", "name": "TEXT", "path": "TEXT",
    "revision": "TEXT", "status": "TEXT NOT NULL", "error_kind": "TEXT", "error": "TEXT", "verdict": "TEXT",
    "statistic": "TEXT", "value": "REAL", "threshold": "REAL", "margin": "REAL", "asr": "REAL",
    "pattern_asr": "REAL", "l2": "REAL", "pattern_cos": "REAL", "model_hash": "TEXT", "out_dir": "TEXT",
    "seconds": "REAL", "timings": "TEXT", "device": "TEXT", "versions": "TEXT", "config": "TEXT",
    "worker": "TEXT", "started": "TEXT", "finished": "TEXT", "run_id": "TEXT", "attempts": "INTEGER",
}
JSON_COLUMNS = ("timings", "versions", "config")


class Store:
    """The results table of one scan folder."""

    def __init__(self, path: str | Path):
        """Open (or create) the database and its table, in WAL mode."""
        self.path = Path(path)
        self.db = sqlite3.connect(str(self.path), timeout=30, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        cols = ", ".join(f"{k} {t}" for k, t in COLUMNS.items())
        self.db.execute(f"CREATE TABLE IF NOT EXISTS results ({cols}, PRIMARY KEY (content_hash, config_key))")
        self.db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def statuses(self, config_key: str) -> dict[str, str]:
        """content_hash -> status of every row of this configuration."""
        cur = self.db.execute("SELECT content_hash, status FROM results WHERE config_key = ?", (config_key,))
        return {r["content_hash"]: r["status"] for r in cur}

    def write(self, row: dict) -> None:
        """Insert or replace one row in one transaction, counting its attempts."""
        vals = {k: (json.dumps(row.get(k), sort_keys=True, default=str) if k in JSON_COLUMNS and row.get(k) is not None
                    else row.get(k)) for k in COLUMNS if k != "attempts"}
        names = ", ".join(vals)
        marks = ", ".join(f":{k}" for k in vals)
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            prev = self.db.execute("SELECT attempts FROM results WHERE content_hash = ? AND config_key = ?",
                                   (vals["content_hash"], vals["config_key"])).fetchone()
            vals["attempts"] = (prev["attempts"] or 0) + 1 if prev else 1
            self.db.execute(f"INSERT OR REPLACE INTO results ({names}, attempts) VALUES ({marks}, :attempts)", vals)

    def rows(self, config_key: str, hashes=None) -> list[dict]:
        """The rows of this configuration (only those of ``hashes`` when given), JSON columns decoded."""
        cur = self.db.execute("SELECT * FROM results WHERE config_key = ?", (config_key,))
        out = [_decoded(dict(r)) for r in cur]
        if hashes is not None:
            keep = set(hashes)
            out = [r for r in out if r["content_hash"] in keep]
        return out

    def close(self) -> None:
        """Close the connection."""
        self.db.close()


def _decoded(row: dict) -> dict:
    """A row with its JSON columns parsed."""
    for k in JSON_COLUMNS:
        if row.get(k):
            row[k] = json.loads(row[k])
    return row
