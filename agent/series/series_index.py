"""The series lifecycle: the ``series`` table and the device that made each series.

A series row goes ``open`` (instances arriving) -> ``complete`` (quiet for the
quiet period, its inference job queued) -> ``inferred``, ``failed`` or
``skipped``; any new or changed instance re-opens it with ``generation + 1``.
The store counts arrivals in (``instance_indexed``, inside its own
transaction), the assembler closes (``complete_quiet``), the inference worker
marks the outcome (``finish``); labels, the twin and status read through the
methods below. Nothing else names these tables.
"""

from __future__ import annotations

import sqlite3

from ftlct.agent.store.database import Database
from ftlct.agent.store.header import InstanceHeader

SCHEMA = """
CREATE TABLE IF NOT EXISTS series (
    series_uid TEXT PRIMARY KEY,
    study_uid TEXT NOT NULL,
    modality TEXT,
    state TEXT NOT NULL,           -- open, complete, inferred, failed, skipped
    generation INTEGER NOT NULL,   -- +1 for every instance that changes the series
    n_instances INTEGER NOT NULL,
    first_received_at REAL NOT NULL,
    last_received_at REAL NOT NULL,
    completed_at REAL,
    reason TEXT                    -- why failed or skipped
);
CREATE INDEX IF NOT EXISTS series_state ON series (state, last_received_at);

-- The device that made each series (last instance wins), for the scanner profile of the twin.
CREATE TABLE IF NOT EXISTS series_devices (
    series_uid TEXT PRIMARY KEY,
    manufacturer TEXT,
    model_name TEXT,
    kernel TEXT,
    kvp REAL,
    slice_thickness_mm REAL
);
"""

STATES = ("open", "complete", "inferred", "failed", "skipped")


class SeriesIndex:
    def __init__(self, db: Database, create: bool = True):
        """``create=False`` for readers (``ftl-agent status``): no DDL, and an index without
        the tables reads as empty."""
        self.db = db
        self._exists = db.adopt(SCHEMA, "series", create)

    # ------------------------------------------------------------------ the store: arrivals
    def instance_indexed(
        self,
        conn: sqlite3.Connection,
        header: InstanceHeader,
        previous_series: str | None,
        now: float,
    ) -> bool:
        """Count an indexed instance into its series and (re-)open it; True if it had finished.

        ``previous_series`` is the series of the copy it replaces (None for a new SOP
        Instance); an instance that changed series leaves the old one.
        """
        self._record_device(conn, header)
        moved = previous_series is not None and previous_series != header.series_uid
        if moved:
            self._touch(conn, previous_series, None, None, -1, now)
        added = 1 if previous_series is None or moved else 0
        return self._touch(conn, header.series_uid, header.study_uid, header.modality, added, now)

    def _touch(self, conn, series_uid, study_uid, modality, added: int, now: float) -> bool:
        row = conn.execute(
            "SELECT state FROM series WHERE series_uid = ?", (series_uid,)
        ).fetchone()
        if row is None:
            conn.execute(
                "INSERT INTO series (series_uid, study_uid, modality, state, generation,"
                " n_instances, first_received_at, last_received_at)"
                " VALUES (?, ?, ?, 'open', 1, ?, ?, ?)",
                (series_uid, study_uid or "", modality, max(added, 0), now, now),
            )
            return False
        conn.execute(
            "UPDATE series SET state = 'open', generation = generation + 1,"
            " n_instances = MAX(n_instances + ?, 0), last_received_at = ?, completed_at = NULL,"
            " reason = NULL WHERE series_uid = ?",
            (added, now, series_uid),
        )
        return row["state"] != "open"

    def _record_device(self, conn: sqlite3.Connection, header: InstanceHeader) -> None:
        conn.execute(
            "INSERT OR REPLACE INTO series_devices (series_uid, manufacturer, model_name, kernel,"
            " kvp, slice_thickness_mm) VALUES (?, ?, ?, ?, ?, ?)",
            (
                header.series_uid,
                header.manufacturer,
                header.model_name,
                header.kernel,
                header.kvp,
                header.slice_thickness_mm,
            ),
        )

    # ------------------------------------------------------------------ the assembler and worker
    def complete_quiet(self, conn: sqlite3.Connection, cutoff: float, now: float) -> list[dict]:
        """Mark every series open since before ``cutoff`` complete; returns
        ``series_uid``, ``generation``, ``n_instances`` of each (inside ``conn``)."""
        rows = conn.execute(
            "SELECT series_uid, generation, n_instances FROM series"
            " WHERE state = 'open' AND last_received_at <= ?",
            (cutoff,),
        ).fetchall()
        for row in rows:
            conn.execute(
                "UPDATE series SET state = 'complete', completed_at = ? WHERE series_uid = ?",
                (now, row["series_uid"]),
            )
        return [dict(row) for row in rows]

    def finish(
        self,
        conn: sqlite3.Connection,
        series_uid: str,
        generation: int,
        state: str,
        reason: str | None,
    ) -> None:
        """The outcome of inference on ``generation``: only if nothing arrived meanwhile
        (a re-opened series waits for its own next job)."""
        conn.execute(
            "UPDATE series SET state = ?, reason = ? WHERE series_uid = ? AND generation = ?"
            " AND state = 'complete'",
            (state, reason, series_uid, generation),
        )

    # ------------------------------------------------------------------ reads
    def get(self, series_uid: str) -> dict | None:
        if not self._exists:
            return None
        row = self.db.query_one("SELECT * FROM series WHERE series_uid = ?", (series_uid,))
        return None if row is None else dict(row)

    def has_series(self, uid: str) -> bool:
        if not self._exists:
            return False
        return self.db.query_one("SELECT 1 FROM series WHERE series_uid = ?", (uid,)) is not None

    def has_study(self, uid: str) -> bool:
        if not self._exists:
            return False
        return (
            self.db.query_one("SELECT 1 FROM series WHERE study_uid = ? LIMIT 1", (uid,))
            is not None
        )

    def open_count(self) -> int:
        if not self._exists:
            return 0
        return int(self.db.scalar("SELECT COUNT(*) FROM series WHERE state = 'open'") or 0)

    def counts_by_state(self) -> dict[str, int]:
        """Every state of ``STATES`` -> how many series are in it."""
        if not self._exists:
            return dict.fromkeys(STATES, 0)
        return self.db.tally("SELECT state, COUNT(*) FROM series GROUP BY state", STATES)

    def with_devices(self) -> list[dict]:
        """Per series: modality, n_instances, first_received_at and the device fields."""
        if not self._exists:
            return []
        rows = self.db.query(
            "SELECT s.modality, s.n_instances, s.first_received_at, d.manufacturer, d.model_name,"
            " d.kernel, d.kvp, d.slice_thickness_mm FROM series s"
            " LEFT JOIN series_devices d ON d.series_uid = s.series_uid"
        )
        return [dict(row) for row in rows]
