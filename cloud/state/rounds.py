"""``rounds``: one row per round (open or done), with what it announced to the sites."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from ftlct.cloud.state.database import Database

SCHEMA = """
CREATE TABLE IF NOT EXISTS rounds (
    round INTEGER PRIMARY KEY, status TEXT NOT NULL, strategy TEXT NOT NULL,
    opened_at REAL NOT NULL, deadline REAL NOT NULL, extensions INTEGER NOT NULL DEFAULT 0,
    base_versions TEXT NOT NULL, assignments TEXT NOT NULL, default_cluster TEXT NOT NULL,
    closed_at REAL, n_updates INTEGER);
"""


@dataclass(frozen=True)
class RoundRow:
    round: int
    status: str  # "open" | "done"
    strategy: str
    opened_at: float
    deadline: float
    extensions: int
    base_versions: dict[str, str]
    assignments: dict[str, str]
    default_cluster: str
    closed_at: float | None
    n_updates: int | None

    def cluster_for(self, site: str) -> str:
        return self.assignments.get(site, self.default_cluster)


class RoundLog:
    def __init__(self, db: Database):
        self.db = db

    def add(self, row: RoundRow) -> None:
        self.db.execute(
            "INSERT INTO rounds VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                row.round,
                row.status,
                row.strategy,
                row.opened_at,
                row.deadline,
                row.extensions,
                json.dumps(row.base_versions),
                json.dumps(row.assignments),
                row.default_cluster,
                row.closed_at,
                row.n_updates,
            ),
        )

    def last(self) -> RoundRow | None:
        row = self.db.execute("SELECT * FROM rounds ORDER BY round DESC LIMIT 1").fetchone()
        return _round_row(row) if row else None

    def history(self, limit: int = 500) -> list[RoundRow]:
        """The last ``limit`` rounds, oldest first."""
        rows = self.db.execute(
            "SELECT * FROM rounds ORDER BY round DESC LIMIT ?", (limit,)
        ).fetchall()
        return [_round_row(row) for row in reversed(rows)]

    def completed(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM rounds WHERE status = 'done'").fetchone()[0]

    def extend(self, round_: int, deadline: float) -> None:
        self.db.execute(
            "UPDATE rounds SET deadline = ?, extensions = extensions + 1 WHERE round = ?",
            (deadline, round_),
        )

    def close(self, round_: int, n_updates: int) -> None:
        cursor = self.db.execute(
            "UPDATE rounds SET status = 'done', closed_at = ?, n_updates = ? "
            "WHERE round = ? AND status = 'open'",
            (time.time(), n_updates, round_),
        )
        if cursor.rowcount != 1:
            raise RuntimeError(f"round {round_} is not open; refusing to close it twice")


def _round_row(row) -> RoundRow:
    return RoundRow(
        round=row[0],
        status=row[1],
        strategy=row[2],
        opened_at=row[3],
        deadline=row[4],
        extensions=row[5],
        base_versions=json.loads(row[6]),
        assignments=json.loads(row[7]),
        default_cluster=row[8],
        closed_at=row[9],
        n_updates=row[10],
    )
