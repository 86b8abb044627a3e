"""The agent's durable federation state, in the index database (SQLite WAL, synchronous FULL).

* ``fed_messages``: the last verified ``rounds/current`` and each cluster's global
  model, as the signed bytes received (``ftl-agent train`` works offline from them);
* ``federation_updates``: every update this site made, one per (round, cluster);
* ``outbox``: signed updates not yet acknowledged by the broker (PUBACK). A row is
  deleted only when the broker has acknowledged it, so a crash, a restart or a
  broker outage never loses one; resending is safe (the cloud knows update ids);
* ``training_runs`` and ``model_events``: what training and model installs did, and why.

Written by ``ftl-agent serve`` and ``ftl-agent train``; read by ``ftl-agent status``.
"""

from __future__ import annotations

import json
import sqlite3
import time

from ftlct.agent.store.database import Database
from ftlct.protocol.exchange import peek
from ftlct.protocol.messages import GlobalModel, RoundAnnouncement, body_to_tensors

SCHEMA = """
CREATE TABLE IF NOT EXISTS fed_messages (
    kind TEXT NOT NULL,            -- round, model
    subject TEXT NOT NULL,         -- '' for the round, the cluster for a model
    version TEXT NOT NULL,         -- round number or model version
    payload BLOB NOT NULL,         -- the signed envelope as received (verified before storing)
    received_at REAL NOT NULL,
    PRIMARY KEY (kind, subject)
);

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

CREATE TABLE IF NOT EXISTS training_runs (
    id INTEGER PRIMARY KEY,
    round INTEGER,
    outcome TEXT NOT NULL,         -- trained, skipped, failed
    reason TEXT,
    metrics TEXT,                  -- JSON
    at REAL NOT NULL
);

CREATE TABLE IF NOT EXISTS model_events (
    id INTEGER PRIMARY KEY,
    cluster TEXT,
    version TEXT,
    outcome TEXT NOT NULL,         -- installed, gate_refused, refused
    reason TEXT,
    f1_current REAL,
    f1_candidate REAL,
    at REAL NOT NULL
);
"""

ROUND = "round"
MODEL = "model"


class FederationStore:
    def __init__(self, db: Database, create: bool = True):
        """``create=False`` for readers (``ftl-agent status``): no DDL, tables must exist."""
        self.db = db
        if create:
            db.ensure(SCHEMA)

    # ------------------------------------------------------------------ received messages
    def save_round(self, payload: bytes, announcement: RoundAnnouncement) -> None:
        self._save(ROUND, "", str(announcement.round), payload)

    def save_model(self, payload: bytes, model: GlobalModel) -> None:
        self._save(MODEL, model.cluster, model.version, payload)

    def _save(self, kind: str, subject: str, version: str, payload: bytes) -> None:
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO fed_messages (kind, subject, version, payload, received_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (kind, subject, version, payload, time.time()),
            )

    def load_round(self) -> RoundAnnouncement | None:
        """The last round announcement received (verified when it arrived)."""
        payload = self._payload(ROUND, "")
        return None if payload is None else RoundAnnouncement.from_payload(peek(payload).payload)

    def load_model(self, cluster: str) -> GlobalModel | None:
        """The last global model received for ``cluster`` (verified when it arrived)."""
        payload = self._payload(MODEL, cluster)
        if payload is None:
            return None
        envelope = peek(payload)
        return GlobalModel.from_payload(envelope.payload, body_to_tensors(envelope.body))

    def model_versions(self) -> dict[str, str]:
        rows = self.db.query("SELECT subject, version FROM fed_messages WHERE kind = ?", (MODEL,))
        return {row["subject"]: row["version"] for row in rows}

    def _payload(self, kind: str, subject: str) -> bytes | None:
        row = self.db.query_one(
            "SELECT payload FROM fed_messages WHERE kind = ? AND subject = ?", (kind, subject)
        )
        return None if row is None else bytes(row["payload"])

    # ------------------------------------------------------------------ updates and outbox
    def update_for(self, round_no: int, cluster: str) -> sqlite3.Row | None:
        return self.db.query_one(
            "SELECT * FROM federation_updates WHERE round = ? AND cluster = ?", (round_no, cluster)
        )

    def outbox_rows(self) -> list[sqlite3.Row]:
        return self.db.query(
            "SELECT id, update_id, topic, payload, attempts FROM outbox ORDER BY id"
        )

    def outbox_count(self) -> int:
        return int(self.db.scalar("SELECT COUNT(*) FROM outbox") or 0)

    def acknowledged(self, row_id: int) -> str | None:
        """The broker acknowledged outbox row ``row_id``: delete it; returns its update id."""
        with self.db.transaction() as conn:
            row = conn.execute("SELECT update_id FROM outbox WHERE id = ?", (row_id,)).fetchone()
            if row is None:
                return None
            conn.execute("DELETE FROM outbox WHERE id = ?", (row_id,))
            conn.execute(
                "UPDATE federation_updates SET acked_at = ? WHERE update_id = ?",
                (time.time(), row["update_id"]),
            )
        return row["update_id"]

    def publish_failed(self, row_id: int, error: str) -> None:
        with self.db.transaction() as conn:
            conn.execute(
                "UPDATE outbox SET attempts = attempts + 1, last_error = ? WHERE id = ?",
                (error, row_id),
            )

    # ------------------------------------------------------------------ history
    def record_training(
        self, round_no: int | None, outcome: str, reason: str, metrics: dict
    ) -> None:
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT INTO training_runs (round, outcome, reason, metrics, at)"
                " VALUES (?, ?, ?, ?, ?)",
                (round_no, outcome, reason, json.dumps(metrics), time.time()),
            )

    def record_model_event(
        self,
        cluster: str | None,
        version: str | None,
        outcome: str,
        reason: str = "",
        f1_current: float | None = None,
        f1_candidate: float | None = None,
    ) -> None:
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT INTO model_events (cluster, version, outcome, reason, f1_current,"
                " f1_candidate, at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (cluster, version, outcome, reason, f1_current, f1_candidate, time.time()),
            )

    def gate_refused(self, version: str) -> bool:
        return bool(
            self.db.scalar(
                "SELECT 1 FROM model_events WHERE version = ? AND outcome = 'gate_refused'",
                (version,),
            )
        )
