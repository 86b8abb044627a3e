"""The ``instances`` table: one row per stored SOP Instance, the current copy only.

Owned here (``InstanceStore`` writes through it); the other stages ask
``InstanceIndex``. Joins inside SQLite (the embeddings database attaches the
index to count only the current copy of each instance) read the view
``current_instances`` published below, never the table, so the table can
change without breaking them.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping

from ftlct.agent.store.database import Database
from ftlct.agent.store.header import InstanceHeader

SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    sop_instance_uid TEXT PRIMARY KEY,
    sop_class_uid TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    modality TEXT,
    transfer_syntax TEXT,
    instance_number INTEGER,
    number_of_frames INTEGER,
    rows INTEGER,
    columns INTEGER,
    path TEXT NOT NULL,            -- relative to the data dir
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    calling_ae TEXT,
    received_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS instances_series ON instances (series_uid);

-- The read interface for joins from another database: which bytes are current, in slice order.
CREATE VIEW IF NOT EXISTS current_instances AS
    SELECT sop_instance_uid, sha256, instance_number FROM instances;
"""


class InstanceIndex:
    def __init__(self, db: Database, create: bool = True):
        """``create=False`` for readers (``ftl-agent status``): no DDL, and an index without
        the table reads as empty."""
        self.db = db
        self._exists = db.adopt(SCHEMA, "instances", create)

    # ------------------------------------------------------------------ the store's writes
    def lookup(self, conn: sqlite3.Connection | None, sop_uid: str) -> Mapping | None:
        """``sha256``, ``path`` and ``series_uid`` of the stored copy: inside ``conn`` if given,
        else as last committed (not waiting for a group commit on its way to the disk)."""
        sql = "SELECT sha256, path, series_uid FROM instances WHERE sop_instance_uid = ?"
        if conn is None:
            return self.db.query_one_committed(sql, (sop_uid,))
        return conn.execute(sql, (sop_uid,)).fetchone()

    def put(
        self,
        conn: sqlite3.Connection,
        header: InstanceHeader,
        relpath: str,
        size: int,
        sha256: str,
        calling_ae: str,
        received_at: float,
    ) -> None:
        """Index the copy at ``relpath`` as the current one (inside the caller's transaction)."""
        conn.execute(
            "INSERT OR REPLACE INTO instances (sop_instance_uid, sop_class_uid, study_uid,"
            " series_uid, modality, transfer_syntax, instance_number, number_of_frames, rows,"
            " columns, path, size, sha256, calling_ae, received_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                header.sop_instance_uid,
                header.sop_class_uid,
                header.study_uid,
                header.series_uid,
                header.modality,
                header.transfer_syntax,
                header.instance_number,
                header.number_of_frames,
                header.rows,
                header.columns,
                relpath,
                size,
                sha256,
                calling_ae,
                received_at,
            ),
        )

    # ------------------------------------------------------------------ reads
    def get(self, sop_uid: str) -> dict | None:
        """The whole row of one instance, or None."""
        if not self._exists:
            return None
        row = self.db.query_one("SELECT * FROM instances WHERE sop_instance_uid = ?", (sop_uid,))
        return None if row is None else dict(row)

    def get_committed(self, sop_uid: str) -> dict | None:
        """``get`` as last committed, without waiting for a writer's transaction to end."""
        row = self.db.query_one_committed(
            "SELECT * FROM instances WHERE sop_instance_uid = ?", (sop_uid,)
        )
        return None if row is None else dict(row)

    def of_series(self, series_uid: str) -> list[dict]:
        """The series' instances in slice order (InstanceNumber, unnumbered last)."""
        rows = self.db.query(
            "SELECT * FROM instances WHERE series_uid = ?"
            " ORDER BY instance_number IS NULL, instance_number, sop_instance_uid",
            (series_uid,),
        )
        return [dict(row) for row in rows]

    def paths(self) -> set[str]:
        return {row["path"] for row in self.db.query("SELECT path FROM instances")}

    def count(self) -> int:
        if not self._exists:
            return 0
        return int(self.db.scalar("SELECT COUNT(*) FROM instances") or 0)

    def bytes_stored(self) -> int:
        if not self._exists:
            return 0
        return int(self.db.scalar("SELECT COALESCE(SUM(size), 0) FROM instances") or 0)
