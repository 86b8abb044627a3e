"""What each local round came to (trained, skipped, failed) and why: the ``training_runs``
table, owned here. Status shows the last one."""

from __future__ import annotations

import json
import sqlite3
import time

from ftlct.agent.store.database import Database

SCHEMA = """
CREATE TABLE IF NOT EXISTS training_runs (
    id INTEGER PRIMARY KEY,
    round INTEGER,
    outcome TEXT NOT NULL,         -- trained, skipped, refused, failed
    reason TEXT,
    metrics TEXT,                  -- JSON
    at REAL NOT NULL
);
"""


class TrainingLog:
    def __init__(self, db: Database, create: bool = True):
        """``create=False`` for readers: no DDL, and an index that never trained reads empty."""
        self.db = db
        self._exists = db.adopt(SCHEMA, "training_runs", create)

    def record(
        self,
        round_no: int | None,
        outcome: str,
        reason: str,
        metrics: dict,
        conn: sqlite3.Connection | None = None,
        now: float | None = None,
    ) -> None:
        """One line of history; inside ``conn`` when it belongs to a bigger transaction."""
        row = (round_no, outcome, reason, json.dumps(metrics), time.time() if now is None else now)
        sql = (
            "INSERT INTO training_runs (round, outcome, reason, metrics, at) VALUES (?, ?, ?, ?, ?)"
        )
        if conn is not None:
            conn.execute(sql, row)
            return
        with self.db.transaction() as own:
            own.execute(sql, row)

    def last(self) -> dict | None:
        """The latest run: ``round``, ``outcome``, ``reason`` (None if empty), ``metrics``."""
        if not self._exists:
            return None
        run = self.db.query_one("SELECT * FROM training_runs ORDER BY id DESC LIMIT 1")
        if run is None:
            return None
        return {
            "round": run["round"],
            "outcome": run["outcome"],
            "reason": run["reason"] or None,
            "metrics": json.loads(run["metrics"] or "{}"),
        }
