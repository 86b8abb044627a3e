"""``rejections``: the most recent refused messages (when, round, site, reason, detail).

The table keeps the last ``keep`` rows (a flood of junk must not fill the
disk); the number refused per reason is kept exactly, in ``counters`` under
``rejected.{reason}``, whatever the table has forgotten.
"""

from __future__ import annotations

import time

from ftlct.cloud.state.counters import Counters
from ftlct.cloud.state.database import Database
from ftlct.cloud.state.meta import FederationMeta

SCHEMA = """
CREATE TABLE IF NOT EXISTS rejections (
    id INTEGER PRIMARY KEY, at REAL NOT NULL, round INTEGER, site TEXT,
    reason TEXT NOT NULL, detail TEXT NOT NULL);
"""
COUNTER_PREFIX = "rejected."
# meta key set once the counters hold what an older state dir counted only as table rows
_COUNTED_FROM_TABLE = "rejection_counts_from_table"
DEFAULT_KEEP = 10_000


class RejectionLog:
    def __init__(self, db: Database, counters: Counters, meta: FederationMeta):
        self.db = db
        self.counters = counters
        self.meta = meta

    def record(
        self,
        round_: int | None,
        site: str | None,
        reason: str,
        detail: str,
        keep: int = DEFAULT_KEEP,
    ) -> None:
        with self.db.transaction():
            cursor = self.db.execute(
                "INSERT INTO rejections (at, round, site, reason, detail) VALUES (?, ?, ?, ?, ?)",
                (time.time(), round_, site, reason, detail[:500]),
            )
            self.db.execute("DELETE FROM rejections WHERE id <= ?", (cursor.lastrowid - keep,))
            self.counters.bump(COUNTER_PREFIX + reason)

    def counts(self) -> dict[str, int]:
        """reason -> how many messages were refused for it (exact, however many rows are kept)."""
        return {
            name.removeprefix(COUNTER_PREFIX): value
            for name, value in self.counters.all().items()
            if name.startswith(COUNTER_PREFIX)
        }

    def counts_of_round(self, round_: int) -> dict[str, int]:
        """reason -> refusals recorded while ``round_`` was the open round (among the rows kept)."""
        rows = self.db.execute(
            "SELECT reason, COUNT(*) FROM rejections WHERE round = ? GROUP BY reason", (round_,)
        )
        return dict(rows.fetchall())

    def count_old_rows(self) -> None:
        """Once per state dir: counters for what an older one counted only as table rows."""
        if self.meta.get(_COUNTED_FROM_TABLE):
            return
        with self.db.transaction():
            if self.meta.get(_COUNTED_FROM_TABLE):  # another process did it meanwhile
                return
            rows = self.db.execute("SELECT reason, COUNT(*) FROM rejections GROUP BY reason")
            for reason, count in rows.fetchall():
                self.counters.bump(COUNTER_PREFIX + reason, count)
            self.meta.set(_COUNTED_FROM_TABLE, "done")
