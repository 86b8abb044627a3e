"""Keep what could not be stored, with the reason, for an operator to inspect.

Owns ``quarantine/`` in the data dir and the ``quarantine`` table indexing it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from ftlct.agent.store.database import Database
from ftlct.agent.store.disk import DiskGuard
from ftlct.agent.store.layout import DataDir
from ftlct.export.files import atomic_write_bytes, atomic_write_text, sha256_bytes

SCHEMA = """
CREATE TABLE IF NOT EXISTS quarantine (
    id INTEGER PRIMARY KEY,
    received_at REAL NOT NULL,
    reason TEXT NOT NULL,
    outcome TEXT NOT NULL,
    path TEXT,                     -- relative to the data dir; NULL when it could not be kept
    size INTEGER NOT NULL,
    calling_ae TEXT,
    sop_class_uid TEXT,            -- as the sender announced them
    sop_instance_uid TEXT
);
"""


class Quarantine:
    def __init__(self, data_dir: DataDir, db: Database, guard: DiskGuard, clock=time.time):
        self.data_dir = data_dir
        self.db = db
        self.guard = guard
        self.clock = clock
        db.ensure(SCHEMA)

    def keep(
        self,
        data: bytes,
        outcome: str,
        reason: str,
        calling_ae: str = "",
        sop_class_uid: str | None = None,
        sop_instance_uid: str | None = None,
    ) -> int:
        """Write ``data`` and a ``.json`` sidecar to ``quarantine/``, index it; returns the row id.

        Below the disk watermark only the index row is written (path NULL): the reason is
        kept even when the bytes cannot be.
        """
        now = self.clock()
        relpath = None
        if not self.guard.below_watermark(len(data) + 4096):
            stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now))
            name = f"{stamp}-{int(now * 1000) % 1000:03d}-{sha256_bytes(data)[:16]}"
            relpath = f"quarantine/{name}.dcm"
            try:
                atomic_write_bytes(self.data_dir.root / relpath, data)
                sidecar = {
                    "reason": reason,
                    "outcome": outcome,
                    "received_at": now,
                    "calling_ae": calling_ae,
                    "sop_class_uid": sop_class_uid,
                    "sop_instance_uid": sop_instance_uid,
                    "size": len(data),
                }
                atomic_write_text(
                    self.data_dir.root / f"quarantine/{name}.json", json.dumps(sidecar, indent=2)
                )
            except OSError as exc:
                relpath = None
                reason = f"{reason} (bytes not kept: {exc.strerror or exc})"
        else:
            reason = f"{reason} (bytes not kept: disk below watermark)"
        with self.db.transaction() as conn:
            cursor = conn.execute(
                "INSERT INTO quarantine (received_at, reason, outcome, path, size, calling_ae,"
                " sop_class_uid, sop_instance_uid) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    now,
                    reason,
                    outcome,
                    relpath,
                    len(data),
                    calling_ae,
                    sop_class_uid,
                    sop_instance_uid,
                ),
            )
            return int(cursor.lastrowid)

    def count(self) -> int:
        return quarantined(self.db)

    def entries(self) -> list[dict]:
        rows = self.db.query("SELECT * FROM quarantine ORDER BY id")
        return [dict(row) for row in rows]

    def path_of(self, entry: dict) -> Path | None:
        return self.data_dir.resolve(entry["path"]) if entry.get("path") else None


def quarantined(db: Database) -> int:
    """How many refused objects the index records (0 for an index without a quarantine yet)."""
    if not db.has_table("quarantine"):
        return 0
    return int(db.scalar("SELECT COUNT(*) FROM quarantine") or 0)
