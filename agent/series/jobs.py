"""The durable inference job queue: the ``jobs`` table of ``index.sqlite``, owned here.

One job per completed series generation. A series that re-opens while its job
is still pending has the job's generation bumped rather than a second job
queued. Jobs found ``running`` at start-up were interrupted and go back to
``pending``.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass

from ftlct.agent.store.database import Database

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY,
    series_uid TEXT NOT NULL,
    generation INTEGER NOT NULL,
    state TEXT NOT NULL,           -- pending, running, done, failed
    attempts INTEGER NOT NULL DEFAULT 0,
    not_before REAL NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    error TEXT
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, not_before, id);
"""
STATES = ("pending", "running", "done", "failed")


@dataclass(frozen=True)
class Job:
    id: int
    series_uid: str
    generation: int
    attempts: int


class JobQueue:
    def __init__(self, db: Database, clock=time.time, create: bool = True):
        """``create=False`` for readers (``ftl-agent status``): no DDL, and an index that
        never had a job queue reads as empty."""
        self.db = db
        self.clock = clock
        self._exists = db.adopt(SCHEMA, "jobs", create)

    def enqueue(self, conn: sqlite3.Connection, series_uid: str, generation: int) -> None:
        """Queue inference of ``series_uid`` (inside the caller's transaction)."""
        pending = conn.execute(
            "SELECT id FROM jobs WHERE series_uid = ? AND state = 'pending'", (series_uid,)
        ).fetchone()
        if pending is not None:
            conn.execute(
                "UPDATE jobs SET generation = ?, attempts = 0, not_before = 0 WHERE id = ?",
                (generation, pending["id"]),
            )
            return
        conn.execute(
            "INSERT INTO jobs (series_uid, generation, state, created_at) VALUES (?, ?, 'pending', ?)",
            (series_uid, generation, self.clock()),
        )

    def claim(self) -> Job | None:
        """The oldest runnable job, now marked running; None if there is none."""
        with self.db.transaction() as conn:
            row = conn.execute(
                "SELECT * FROM jobs WHERE state = 'pending' AND not_before <= ? ORDER BY id LIMIT 1",
                (self.clock(),),
            ).fetchone()
            if row is None:
                return None
            conn.execute(
                "UPDATE jobs SET state = 'running', attempts = attempts + 1, started_at = ?"
                " WHERE id = ?",
                (self.clock(), row["id"]),
            )
            return Job(row["id"], row["series_uid"], row["generation"], row["attempts"] + 1)

    def finish(self, conn: sqlite3.Connection, job: Job) -> None:
        conn.execute(
            "UPDATE jobs SET state = 'done', finished_at = ?, error = NULL WHERE id = ?",
            (self.clock(), job.id),
        )

    def retry_later(self, job: Job, error: str, delay_s: float) -> None:
        with self.db.transaction() as conn:
            conn.execute(
                "UPDATE jobs SET state = 'pending', not_before = ?, error = ? WHERE id = ?",
                (self.clock() + delay_s, error, job.id),
            )

    def fail(self, conn: sqlite3.Connection, job: Job, error: str) -> None:
        conn.execute(
            "UPDATE jobs SET state = 'failed', finished_at = ?, error = ? WHERE id = ?",
            (self.clock(), error, job.id),
        )

    def release(self, job: Job) -> None:
        """Put an interrupted job back, not counting the attempt (shutdown is not its fault)."""
        with self.db.transaction() as conn:
            conn.execute(
                "UPDATE jobs SET state = 'pending', attempts = MAX(attempts - 1, 0) WHERE id = ?",
                (job.id,),
            )

    def reset_interrupted(self) -> int:
        """Start-up: jobs left ``running`` by a stopped process become ``pending`` again."""
        with self.db.transaction() as conn:
            return conn.execute(
                "UPDATE jobs SET state = 'pending' WHERE state = 'running'"
            ).rowcount

    def depth(self) -> int:
        """Jobs waiting or running."""
        return int(
            self.db.scalar("SELECT COUNT(*) FROM jobs WHERE state IN ('pending', 'running')")
        )

    def counts_by_state(self) -> dict[str, int]:
        """Every state of ``STATES`` -> how many jobs are in it."""
        if not self._exists:
            return dict.fromkeys(STATES, 0)
        return self.db.tally("SELECT state, COUNT(*) FROM jobs GROUP BY state", STATES)
