"""The ``deliveries`` table: one row per (result, destination), pending until sent or given up.

Owned here; ``DeliveryQueue`` works through it and status counts with it.
"""

from __future__ import annotations

import sqlite3

from ftlct.agent.store.database import Database

SCHEMA = """
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY,
    result_id INTEGER NOT NULL,
    series_uid TEXT NOT NULL,
    destination TEXT NOT NULL,
    state TEXT NOT NULL,           -- pending, sent, failed
    path TEXT,                     -- the SR file once built, relative to the data dir
    sop_instance_uid TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    last_error TEXT,
    created_at REAL NOT NULL,
    sent_at REAL
);
CREATE INDEX IF NOT EXISTS deliveries_state ON deliveries (state, next_attempt_at);
"""
STATES = ("pending", "sent", "failed", "superseded")
_COLUMNS = {"state", "path", "sop_instance_uid", "attempts", "next_attempt_at", "last_error"}
_COLUMNS |= {"sent_at"}


class Deliveries:
    def __init__(self, db: Database, create: bool = True):
        """``create=False`` for readers (``ftl-agent status``): no DDL, and an index that
        never delivered reads as empty."""
        self.db = db
        self._exists = db.adopt(SCHEMA, "deliveries", create)

    def add(
        self,
        conn: sqlite3.Connection,
        result_id: int,
        series_uid: str,
        destination: str,
        now: float,
    ) -> None:
        """Queue a delivery (inside the caller's transaction, the one that stores the result)."""
        conn.execute(
            "INSERT INTO deliveries (result_id, series_uid, destination, state, created_at)"
            " VALUES (?, ?, ?, 'pending', ?)",
            (result_id, series_uid, destination, now),
        )

    def next_due(self, now: float) -> dict | None:
        """The pending delivery whose next attempt is the most overdue, or None."""
        row = self.db.query_one(
            "SELECT * FROM deliveries WHERE state = 'pending' AND next_attempt_at <= ?"
            " ORDER BY next_attempt_at, id LIMIT 1",
            (now,),
        )
        return None if row is None else dict(row)

    def update(self, delivery_id: int, **changes) -> None:
        unknown = set(changes) - _COLUMNS
        if unknown:
            raise ValueError(f"not a delivery column: {sorted(unknown)}")
        assignments = ", ".join(f"{key} = ?" for key in changes)
        with self.db.transaction() as conn:
            conn.execute(
                f"UPDATE deliveries SET {assignments} WHERE id = ?",
                (*changes.values(), delivery_id),
            )

    def pending(self) -> int:
        if not self._exists:
            return 0
        return int(self.db.scalar("SELECT COUNT(*) FROM deliveries WHERE state = 'pending'"))

    def counts_by_state(self) -> dict[str, int]:
        """Every state of ``STATES`` -> how many deliveries are in it."""
        if not self._exists:
            return dict.fromkeys(STATES, 0)
        return self.db.tally("SELECT state, COUNT(*) FROM deliveries GROUP BY state", STATES)
