"""``rejections``: one row per refused update (when, round, site, reason, detail)."""

from __future__ import annotations

import time

from ftlct.cloud.state.database import Database

SCHEMA = """
CREATE TABLE IF NOT EXISTS rejections (
    id INTEGER PRIMARY KEY, at REAL NOT NULL, round INTEGER, site TEXT,
    reason TEXT NOT NULL, detail TEXT NOT NULL);
"""


class RejectionLog:
    def __init__(self, db: Database):
        self.db = db

    def record(self, round_: int | None, site: str | None, reason: str, detail: str) -> None:
        self.db.execute(
            "INSERT INTO rejections (at, round, site, reason, detail) VALUES (?, ?, ?, ?, ?)",
            (time.time(), round_, site, reason, detail[:500]),
        )

    def counts(self) -> dict[str, int]:
        """reason -> how many updates were refused for it."""
        rows = self.db.execute("SELECT reason, COUNT(*) FROM rejections GROUP BY reason")
        return dict(rows.fetchall())

    def counts_of_round(self, round_: int) -> dict[str, int]:
        """reason -> refusals recorded while ``round_`` was the open round."""
        rows = self.db.execute(
            "SELECT reason, COUNT(*) FROM rejections WHERE round = ? GROUP BY reason", (round_,)
        )
        return dict(rows.fetchall())
