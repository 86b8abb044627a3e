"""``twins``: the last verified twin state of each site, and when the cloud heard from it."""

from __future__ import annotations

import json
import time

from ftlct.cloud.state.database import Database

SCHEMA = """
CREATE TABLE IF NOT EXISTS twins (
    site TEXT PRIMARY KEY, state TEXT NOT NULL, status TEXT NOT NULL, online INTEGER NOT NULL,
    model_version TEXT NOT NULL, last_seen REAL NOT NULL);
"""


class TwinTable:
    def __init__(self, db: Database):
        self.db = db

    def save(
        self, site: str, state: dict, status: str, online: bool, model_version: str, seen: float
    ) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO twins VALUES (?, ?, ?, ?, ?, ?)",
            (site, json.dumps(state), status, int(online), model_version, seen),
        )

    def touch(self, site: str) -> None:
        """A sign of life other than a twin message (an accepted update)."""
        self.db.execute("UPDATE twins SET last_seen = ? WHERE site = ?", (time.time(), site))

    def all(self) -> dict[str, dict]:
        rows = self.db.execute(
            "SELECT site, state, status, online, model_version, last_seen FROM twins"
        )
        return {
            r[0]: {
                "state": json.loads(r[1]),
                "status": r[2],
                "online": bool(r[3]),
                "model_version": r[4],
                "last_seen": r[5],
            }
            for r in rows
        }
