"""``sites``: who is enrolled, with which Ed25519 public key (``ftl-cloud enroll`` writes here).

Read on every message, not cached: an enrolment made by another process
counts from the next message on.
"""

from __future__ import annotations

import time

from ftlct.cloud.state.database import Database

SCHEMA = """
CREATE TABLE IF NOT EXISTS sites (
    site TEXT PRIMARY KEY, public_key TEXT NOT NULL, enrolled_at REAL NOT NULL, via TEXT NOT NULL);
"""


class SiteKeys:
    def __init__(self, db: Database):
        self.db = db

    def enroll(self, site: str, public_key: str, via: str = "enroll") -> str | None:
        """Store ``site``'s key; returns the key it replaces (None if new)."""
        with self.db.transaction():
            old = self.public_key(site)
            self.db.execute(
                "INSERT OR REPLACE INTO sites VALUES (?, ?, ?, ?)",
                (site, public_key, time.time(), via),
            )
        return old

    def public_key(self, site: str) -> str | None:
        row = self.db.execute("SELECT public_key FROM sites WHERE site = ?", (site,)).fetchone()
        return row[0] if row else None

    def enrolled(self) -> dict[str, str]:
        """site -> public key, for every enrolled site."""
        return dict(self.db.execute("SELECT site, public_key FROM sites").fetchall())

    def count(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM sites").fetchone()[0]
