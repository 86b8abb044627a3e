"""The updates this site made and the ones not yet delivered: ``federation_updates`` and
``outbox``, owned here.

* ``federation_updates``: every update made, one per (round, cluster): the UNIQUE
  pair makes a second release for the same round (serve and ``train`` at once)
  fail instead of sending twice;
* ``outbox``: the signed bytes of each update not yet acknowledged. A row goes
  only when ``acknowledged`` is called (today: on the broker's PUBACK), so a
  crash, a restart or a broker outage never loses one; resending is safe (the
  cloud knows update ids).

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
"""


@dataclass(frozen=True)
class OutboxEntry:
    id: int
    update_id: str
    topic: str
    payload: bytes
    attempts: int


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
        """What waits to be delivered, oldest first."""
        if not self._exists:
            return []
        rows = self.db.query(
            "SELECT id, update_id, topic, payload, attempts FROM outbox ORDER BY id"
        )
        return [
            OutboxEntry(r["id"], r["update_id"], r["topic"], bytes(r["payload"]), r["attempts"])
            for r in rows
        ]

    def count(self) -> int:
        if not self._exists:
            return 0
        return int(self.db.scalar("SELECT COUNT(*) FROM outbox") or 0)

    def acknowledged(self, entry_id: int) -> str | None:
        """Entry ``entry_id`` was delivered: delete it; returns its update id."""
        with self.db.transaction() as conn:
            row = conn.execute("SELECT update_id FROM outbox WHERE id = ?", (entry_id,)).fetchone()
            if row is None:
                return None
            conn.execute("DELETE FROM outbox WHERE id = ?", (entry_id,))
            conn.execute(
                "UPDATE federation_updates SET acked_at = ? WHERE update_id = ?",
                (time.time(), row["update_id"]),
            )
        return row["update_id"]

    def publish_failed(self, entry_id: int, error: str) -> None:
        with self.db.transaction() as conn:
            conn.execute(
                "UPDATE outbox SET attempts = attempts + 1, last_error = ? WHERE id = ?",
                (error, entry_id),
            )

    def made_and_acknowledged(self) -> tuple[int, int]:
        """``(updates made, updates acknowledged)`` over the site's whole history."""
        if not self._exists:
            return 0, 0
        row = self.db.query_one(
            "SELECT COUNT(*) AS made, COUNT(acked_at) AS acked FROM federation_updates"
        )
        return int(row["made"]), int(row["acked"])
