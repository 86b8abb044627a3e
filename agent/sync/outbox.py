"""The updates this site made and the ones not yet delivered: ``federation_updates`` and
``outbox``, owned here.

* ``federation_updates``: every update made, one per (round, cluster): the UNIQUE
  pair makes a second release for the same round (serve and ``train`` at once)
  fail instead of sending twice;
* ``outbox``: the signed bytes of each update the cloud has not yet answered. A
  row goes only when the cloud's signed receipt for its update id arrives
  (``receipted``), or when its round has closed without one (``close_rounds``):
  the broker's PUBACK only says the broker has it (``broker_acknowledged``), and
  a broker drops queued messages. A crash, a restart or a broker outage never
  loses one; resending is safe (the cloud answers a resend ``duplicate``);
* ``update_deliveries``: how each update left the outbox: ``accepted``,
  ``duplicate`` or ``rejected`` (with the cloud's reason) by receipt, or
  ``unreceipted`` when its round closed first.

Both rows of an update are written in one transaction (``queue``, called by the
release with the privacy charge and the training log beside it).
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass

from ftlct.agent.store.database import Database

SCHEMA = """
CREATE TABLE IF NOT EXISTS federation_updates (
    update_id TEXT PRIMARY KEY,
    round INTEGER NOT NULL,
    cluster TEXT NOT NULL,
    base_version TEXT NOT NULL,
    n_samples INTEGER NOT NULL,
    codec TEXT NOT NULL,
    metrics TEXT NOT NULL,         -- JSON, local only (what was sent is in the payload)
    created_at REAL NOT NULL,
    acked_at REAL,
    UNIQUE (round, cluster)
);

CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY,
    update_id TEXT NOT NULL UNIQUE,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    created_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
);

CREATE TABLE IF NOT EXISTS update_deliveries (
    update_id TEXT PRIMARY KEY,
    outcome TEXT NOT NULL,         -- accepted, duplicate, rejected, unreceipted
    reason TEXT NOT NULL,          -- the cloud's reason for a rejection, else ''
    at REAL NOT NULL
);
"""
OUTCOMES = ("accepted", "duplicate", "rejected", "unreceipted")


@dataclass(frozen=True)
class OutboxEntry:
    id: int
    update_id: str
    topic: str
    payload: bytes
    attempts: int  # publishes so far (over restarts)
    round: int


@dataclass(frozen=True)
class MadeUpdate:
    """An update as the release hands it to ``queue``."""

    update_id: str
    round: int
    cluster: str
    base_version: str
    n_samples: int
    codec: str
    metrics: dict[str, float]
    topic: str
    payload: bytes


class Outbox:
    def __init__(self, db: Database, create: bool = True):
        """``create=False`` for readers (``ftl-agent status``): no DDL, and an index that
        never made an update reads as empty."""
        self.db = db
        self._exists = db.adopt(SCHEMA, "outbox", create)

    def queue(self, conn: sqlite3.Connection, update: MadeUpdate, now: float) -> None:
        """Record and queue ``update`` (inside the caller's transaction);
        ``sqlite3.IntegrityError`` if this site already made one for the round and cluster."""
        conn.execute(
            "INSERT INTO federation_updates (update_id, round, cluster, base_version, n_samples,"
            " codec, metrics, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                update.update_id,
                update.round,
                update.cluster,
                update.base_version,
                update.n_samples,
                update.codec,
                json.dumps(update.metrics),
                now,
            ),
        )
        conn.execute(
            "INSERT INTO outbox (update_id, topic, payload, created_at) VALUES (?, ?, ?, ?)",
            (update.update_id, update.topic, update.payload, now),
        )

    def made_for(self, round_no: int, cluster: str) -> bool:
        """Whether this site already made its update for ``round_no`` in ``cluster``."""
        if not self._exists:
            return False
        row = self.db.query_one(
            "SELECT 1 FROM federation_updates WHERE round = ? AND cluster = ?", (round_no, cluster)
        )
        return row is not None

    def entries(self) -> list[OutboxEntry]:
        """What waits for the cloud's receipt, oldest first."""
        if not self._exists:
            return []
        rows = self.db.query(
            "SELECT o.id, o.update_id, o.topic, o.payload, o.attempts, u.round FROM outbox o"
            " JOIN federation_updates u USING (update_id) ORDER BY o.id"
        )
        return [
            OutboxEntry(
                r["id"], r["update_id"], r["topic"], bytes(r["payload"]), r["attempts"], r["round"]
            )
            for r in rows
        ]

    def count(self) -> int:
        if not self._exists:
            return 0
        return int(self.db.scalar("SELECT COUNT(*) FROM outbox") or 0)

    def published(self, update_id: str) -> None:
        """``update_id`` went to the broker once more."""
        with self.db.transaction() as conn:
            conn.execute(
                "UPDATE outbox SET attempts = attempts + 1 WHERE update_id = ?", (update_id,)
            )

    def broker_acknowledged(self, update_id: str) -> None:
        """The broker's PUBACK for ``update_id``: noted (the first time); the row stays until
        the cloud's receipt."""
        with self.db.transaction() as conn:
            conn.execute(
                "UPDATE federation_updates SET acked_at = ? WHERE update_id = ? AND acked_at IS NULL",
                (time.time(), update_id),
            )

    def at_broker(self, update_id: str) -> bool:
        """Whether the broker has acknowledged ``update_id`` at least once."""
        row = self.db.query_one(
            "SELECT acked_at FROM federation_updates WHERE update_id = ?", (update_id,)
        )
        return row is not None and row["acked_at"] is not None

    def publish_failed(self, update_id: str, error: str) -> None:
        with self.db.transaction() as conn:
            conn.execute("UPDATE outbox SET last_error = ? WHERE update_id = ?", (error, update_id))

    def receipted(self, update_id: str, outcome: str, reason: str = "") -> bool:
        """The cloud's verified receipt for ``update_id``: the row leaves the outbox and the
        first verdict is recorded. False if this site never made that update."""
        assert outcome in OUTCOMES[:3]
        with self.db.transaction() as conn:
            made = conn.execute(
                "SELECT 1 FROM federation_updates WHERE update_id = ?", (update_id,)
            ).fetchone()
            if made is None:
                return False
            conn.execute("DELETE FROM outbox WHERE update_id = ?", (update_id,))
            conn.execute(
                "INSERT OR IGNORE INTO update_deliveries (update_id, outcome, reason, at)"
                " VALUES (?, ?, ?, ?)",
                (update_id, outcome, reason, time.time()),
            )
        return True

    def close_rounds(self, current_round: int, current_open: bool) -> list[str]:
        """Stop waiting for updates of rounds that have closed: those before
        ``current_round``, and its own once it is no longer open. Returns their update ids."""
        if not self._exists:
            return []
        with self.db.transaction() as conn:
            rows = conn.execute(
                "SELECT o.update_id FROM outbox o JOIN federation_updates u USING (update_id)"
                " WHERE u.round < ? OR (u.round = ? AND NOT ?)",
                (current_round, current_round, current_open),
            ).fetchall()
            closed = [row["update_id"] for row in rows]
            for update_id in closed:
                conn.execute("DELETE FROM outbox WHERE update_id = ?", (update_id,))
                conn.execute(
                    "INSERT OR IGNORE INTO update_deliveries (update_id, outcome, reason, at)"
                    " VALUES (?, 'unreceipted', '', ?)",
                    (update_id, time.time()),
                )
        return closed

    def delivery_counts(self) -> dict[str, int]:
        """``{outcome: updates}`` over the site's history, every outcome named."""
        if not self._exists or not self.db.has_table("update_deliveries"):
            return dict.fromkeys(OUTCOMES, 0)
        return self.db.tally(
            "SELECT outcome, COUNT(*) FROM update_deliveries GROUP BY outcome", OUTCOMES
        )

    def last_rejection(self) -> dict | None:
        """The last update the cloud rejected: its round and the cloud's reason."""
        if not self._exists or not self.db.has_table("update_deliveries"):
            return None
        row = self.db.query_one(
            "SELECT u.round, d.reason, d.update_id FROM update_deliveries d"
            " JOIN federation_updates u USING (update_id)"
            " WHERE d.outcome = 'rejected' ORDER BY d.at DESC LIMIT 1"
        )
        return None if row is None else dict(row)

    def made_and_acknowledged(self) -> tuple[int, int]:
        """``(updates made, updates the cloud acknowledged: accepted or duplicate)``."""
        if not self._exists:
            return 0, 0
        made = int(self.db.scalar("SELECT COUNT(*) FROM federation_updates") or 0)
        counts = self.delivery_counts()
        return made, counts["accepted"] + counts["duplicate"]
