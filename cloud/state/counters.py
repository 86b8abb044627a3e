"""``counters``: named event counts (duplicates ignored, twin states refused...), exact and durable."""

from __future__ import annotations

from ftlct.cloud.state.database import Database

SCHEMA = "CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);"


class Counters:
    def __init__(self, db: Database):
        self.db = db

    def bump(self, name: str, by: int = 1) -> None:
        self.db.execute(
            "INSERT INTO counters VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = value + ?",
            (name, by, by),
        )

    def all(self) -> dict[str, int]:
        return dict(self.db.execute("SELECT name, value FROM counters").fetchall())
