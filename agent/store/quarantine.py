"""Keep what could not be stored, with the reason, for an operator to inspect, within a quota.

Owns ``quarantine/`` in the data dir, the ``quarantine`` table indexing it and
``quarantine_totals`` (what eviction removed). Refused bytes come from a peer,
so they must not be able to fill the disk: the quarantine keeps at most
``max_bytes`` and ``max_entries`` (the oldest entries go first, counted), and it
keeps bytes only while the disk stays above twice the storage watermark, so
refusals never push the agent into refusing good instances.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from ftlct.agent.store.database import Database
from ftlct.agent.store.disk import DiskGuard
from ftlct.agent.store.layout import FILE_MODE, DataDir
from ftlct.export.files import atomic_write_bytes, fsync_dir, sha256_file

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
CREATE TABLE IF NOT EXISTS quarantine_totals (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    evicted INTEGER NOT NULL,       -- entries removed to stay within the quota
    evicted_bytes INTEGER NOT NULL,
    conflicts INTEGER NOT NULL      -- resent SOP Instances with other bytes, ever
);
INSERT OR IGNORE INTO quarantine_totals (id, evicted, evicted_bytes, conflicts)
    VALUES (1, 0, 0, 0);
"""

SIDECAR_ALLOWANCE = 4096  # what a .json reason costs on disk, counted with its dataset


@dataclass(frozen=True)
class QuarantineLimits:
    max_bytes: int = 2**30  # refused bytes kept in total (datasets + reasons)
    max_entries: int = 10_000  # refusals remembered (rows, with or without bytes)


class Quarantine:
    def __init__(
        self,
        data_dir: DataDir,
        db: Database,
        guard: DiskGuard,
        clock=time.time,
        limits: QuarantineLimits | None = None,
    ):
        self.data_dir = data_dir
        self.db = db
        self.guard = guard
        self.clock = clock
        self.limits = limits or QuarantineLimits()
        db.ensure(SCHEMA)

    # ------------------------------------------------------------------ writes
    def keep_file(
        self,
        path: Path,
        outcome: str,
        reason: str,
        calling_ae: str = "",
        sop_class_uid: str | None = None,
        sop_instance_uid: str | None = None,
    ) -> int:
        """Move the refused file at ``path`` (in ``incoming/``) into ``quarantine/`` with a
        ``.json`` sidecar and index it; returns the row id.

        When the bytes cannot be kept (larger than the quota, the disk too full, a write
        error) only the row is written, with path NULL and why in the reason, and the file
        is left for the caller to delete.
        """
        now = self.clock()
        size = path.stat().st_size
        relpath = None
        refusal = self._cannot_keep(size)
        if refusal:
            reason = f"{reason} (bytes not kept: {refusal})"
        else:
            stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now))
            name = f"{stamp}-{int(now * 1000) % 1000:03d}-{sha256_file(path)[:16]}"
            relpath = f"quarantine/{name}.dcm"
            sidecar = {
                "reason": reason,
                "outcome": outcome,
                "received_at": now,
                "calling_ae": calling_ae,
                "sop_class_uid": sop_class_uid,
                "sop_instance_uid": sop_instance_uid,
                "size": size,
            }
            try:
                self._make_room(size)
                target = self.data_dir.root / relpath
                os.replace(path, target)
                fsync_dir(target.parent)
                atomic_write_bytes(
                    target.with_suffix(".json"),
                    json.dumps(sidecar, indent=2).encode(),
                    mode=FILE_MODE,
                )
            except OSError as exc:
                relpath = None
                reason = f"{reason} (bytes not kept: {exc.strerror or exc})"
        return self._insert(
            now, reason, outcome, relpath, size, calling_ae, sop_class_uid, sop_instance_uid
        )

    def record(
        self,
        outcome: str,
        reason: str,
        size: int,
        calling_ae: str = "",
        sop_class_uid: str | None = None,
        sop_instance_uid: str | None = None,
    ) -> int:
        """A refusal whose bytes were never kept (e.g. a dataset aborted mid-transfer)."""
        return self._insert(
            self.clock(), reason, outcome, None, size, calling_ae, sop_class_uid, sop_instance_uid
        )

    def _cannot_keep(self, size: int) -> str:
        if size + SIDECAR_ALLOWANCE > self.limits.max_bytes:
            return f"larger than the {self.limits.max_bytes} byte quarantine quota"
        # The file is on disk already; keeping it must leave the band between one and two
        # watermarks to good instances.
        if self.guard.free() < 2 * self.guard.min_free_bytes:
            return "disk below twice the storage watermark"
        return ""

    def _make_room(self, size: int) -> None:
        """Evict the oldest kept bytes until ``size`` more fit in the quota."""
        budget = self.limits.max_bytes - size - SIDECAR_ALLOWANCE
        with self.db.transaction() as conn:
            kept = conn.execute(
                "SELECT COALESCE(SUM(size), 0) + ? * COUNT(*) FROM quarantine"
                " WHERE path IS NOT NULL",
                (SIDECAR_ALLOWANCE,),
            ).fetchone()[0]
            if kept <= budget:
                return
            victims = []
            for row in conn.execute(
                "SELECT id, path, size FROM quarantine WHERE path IS NOT NULL ORDER BY id"
            ):
                if kept <= budget:
                    break
                victims.append(row)
                kept -= row["size"] + SIDECAR_ALLOWANCE
            self._evict(conn, victims)

    def _insert(self, now, reason, outcome, relpath, size, calling_ae, sop_class, sop_instance):
        with self.db.transaction() as conn:
            cursor = conn.execute(
                "INSERT INTO quarantine (received_at, reason, outcome, path, size, calling_ae,"
                " sop_class_uid, sop_instance_uid) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (now, reason, outcome, relpath, size, calling_ae, sop_class, sop_instance),
            )
            entry_id = int(cursor.lastrowid)
            if outcome == "conflict":
                conn.execute("UPDATE quarantine_totals SET conflicts = conflicts + 1 WHERE id = 1")
            excess = (
                conn.execute("SELECT COUNT(*) FROM quarantine").fetchone()[0]
                - self.limits.max_entries
            )
            if excess > 0:
                victims = conn.execute(
                    "SELECT id, path, size FROM quarantine ORDER BY id LIMIT ?", (excess,)
                ).fetchall()
                self._evict(conn, victims)
            return entry_id

    def _evict(self, conn, victims) -> None:
        """Delete ``victims`` (rows) and their files, counting them (inside ``conn``'s
        transaction; a file whose row is gone is at worst an orphan ``recover`` removes)."""
        if not victims:
            return
        conn.executemany("DELETE FROM quarantine WHERE id = ?", [(v["id"],) for v in victims])
        conn.execute(
            "UPDATE quarantine_totals SET evicted = evicted + ?,"
            " evicted_bytes = evicted_bytes + ? WHERE id = 1",
            (len(victims), sum(v["size"] for v in victims if v["path"])),
        )
        for victim in victims:
            if victim["path"]:
                dataset = self.data_dir.root / victim["path"]
                dataset.unlink(missing_ok=True)
                dataset.with_suffix(".json").unlink(missing_ok=True)

    def recover(self) -> int:
        """Remove files no row names (a crash between the move and the row); returns how many."""
        named = {
            row["path"]
            for row in self.db.query("SELECT path FROM quarantine WHERE path IS NOT NULL")
        }
        removed = 0
        for path in self.data_dir.quarantine.iterdir():
            dataset = path.with_suffix(".dcm").relative_to(self.data_dir.root).as_posix()
            if path.is_file() and dataset not in named:
                path.unlink(missing_ok=True)
                removed += 1
        return removed

    # ------------------------------------------------------------------ reads
    def count(self) -> int:
        return quarantined(self.db)

    def entries(self) -> list[dict]:
        rows = self.db.query("SELECT * FROM quarantine ORDER BY id")
        return [dict(row) for row in rows]

    def path_of(self, entry: dict) -> Path | None:
        return self.data_dir.resolve(entry["path"]) if entry.get("path") else None


def quarantine_summary(db: Database) -> dict[str, int]:
    """Kept entries, their bytes, what eviction removed, and conflicts ever
    (all 0 for an index without a quarantine yet)."""
    if not db.has_table("quarantine"):
        return {"kept": 0, "bytes": 0, "evicted": 0, "evicted_bytes": 0, "conflicts": 0}
    row = db.query_one(
        "SELECT COUNT(*) AS kept, COALESCE(SUM(CASE WHEN path IS NOT NULL THEN size END), 0)"
        " AS bytes FROM quarantine"
    )
    totals = (
        db.query_one("SELECT * FROM quarantine_totals WHERE id = 1")
        if db.has_table("quarantine_totals")
        else None
    )
    return {
        "kept": int(row["kept"]),
        "bytes": int(row["bytes"]),
        "evicted": int(totals["evicted"]) if totals else 0,
        "evicted_bytes": int(totals["evicted_bytes"]) if totals else 0,
        "conflicts": int(totals["conflicts"]) if totals else 0,
    }


def quarantined(db: Database) -> int:
    """How many refusals the agent has recorded, the evicted ones included."""
    summary = quarantine_summary(db)
    return summary["kept"] + summary["evicted"]
