"""What became of each global model received (installed, gate_refused, refused) and why:
the ``model_events`` table, owned here."""

from __future__ import annotations

import time

from ftlct.agent.store.database import Database

SCHEMA = """
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


class ModelEvents:
    def __init__(self, db: Database, create: bool = True):
        """``create=False`` for readers: no DDL, and an index without events reads empty."""
        self.db = db
        self._exists = db.adopt(SCHEMA, "model_events", create)

    def record(
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
        """Whether the gate already refused ``version`` (it is not judged twice)."""
        return bool(
            self.db.scalar(
                "SELECT 1 FROM model_events WHERE version = ? AND outcome = 'gate_refused'",
                (version,),
            )
        )

    def counts_by_outcome(self) -> dict[str, int]:
        if not self._exists:
            return {}
        return self.db.tally("SELECT outcome, COUNT(*) FROM model_events GROUP BY outcome")

    def last(self) -> dict | None:
        """The latest event: ``version``, ``outcome``, ``reason``."""
        if not self._exists:
            return None
        row = self.db.query_one("SELECT * FROM model_events ORDER BY id DESC LIMIT 1")
        if row is None:
            return None
        return {"version": row["version"], "outcome": row["outcome"], "reason": row["reason"]}
