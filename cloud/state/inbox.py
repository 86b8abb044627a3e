"""``inbox``: raw MQTT messages, durable before the broker hears PUBACK, until the round loop judges them.

The receive path only appends here (batched commits) and acknowledges
after each commit, so the cloud drains the broker as fast as messages
arrive, whatever validation and aggregation cost. The inbox is its own
SQLite file (``inbox.sqlite``), so appending never waits for the round
loop's longer transactions on ``cloud.sqlite``.

Exactly once across the two files: the round loop records the id of the
last message it judged (meta ``inbox_judged``) in the same commit as its
decisions, and takes only later ids; rows up to it are then deleted at
leisure. Ids are AUTOINCREMENT, so they never go back.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ftlct.cloud.state.database import Database

INBOX_DB = "inbox.sqlite"
JUDGED_KEY = "inbox_judged"  # meta key in cloud.sqlite: the last inbox id judged

SCHEMA = """
CREATE TABLE IF NOT EXISTS inbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, payload BLOB NOT NULL,
    retained INTEGER NOT NULL, received_at REAL NOT NULL);
"""


@dataclass(frozen=True)
class InboxMessage:
    id: int
    topic: str
    payload: bytes
    retained: bool


class Inbox:
    def __init__(self, path: Path):
        self.db = Database(path)
        self.db.create(SCHEMA)
        self.removed_upto = 0  # the last id this connection removed up to

    @classmethod
    def open(cls, state_dir: str | Path) -> Inbox:
        return cls(Path(state_dir) / INBOX_DB)

    def close(self) -> None:
        self.db.close()

    def append(self, messages: Iterable[tuple[str, bytes, bool]]) -> None:
        """Store ``(topic, payload, retained)`` messages in one commit (durable when it returns)."""
        now = time.time()
        with self.db.transaction():
            self.db.executemany(
                "INSERT INTO inbox (topic, payload, retained, received_at) VALUES (?, ?, ?, ?)",
                [(topic, payload, int(retained), now) for topic, payload, retained in messages],
            )

    def after(self, judged: int, limit: int) -> list[InboxMessage]:
        """The oldest messages with an id above ``judged``."""
        rows = self.db.execute(
            "SELECT id, topic, payload, retained FROM inbox WHERE id > ? ORDER BY id LIMIT ?",
            (judged, limit),
        )
        return [InboxMessage(r[0], r[1], bytes(r[2]), bool(r[3])) for r in rows]

    def remove_upto(self, judged: int) -> None:
        with self.db.transaction():
            self.db.execute("DELETE FROM inbox WHERE id <= ?", (judged,))
        self.removed_upto = max(self.removed_upto, judged)

    def count(self) -> int:
        """How many messages the inbox holds (at most), from the ends of the id range: the ids are
        contiguous (appended in order, removed only from the oldest end), and COUNT(*) would
        read every row, each ~6 KB, at every batch the receive path stores. Judged rows count
        until the round loop removes them (at most ``server.REMOVE_EVERY`` of them)."""
        row = self.db.execute(
            "SELECT (SELECT MAX(id) FROM inbox) - (SELECT MIN(id) FROM inbox) + 1"
        ).fetchone()
        return row[0] or 0

    def continue_after(self, judged: int) -> None:
        """Make new ids exceed ``judged`` (an inbox file recreated under an older state)."""
        with self.db.transaction():
            row = self.db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'inbox'").fetchone()
            if row is None:
                self.db.execute(
                    "INSERT INTO sqlite_sequence (name, seq) VALUES ('inbox', ?)", (judged,)
                )
            elif row[0] < judged:
                self.db.execute(
                    "UPDATE sqlite_sequence SET seq = ? WHERE name = 'inbox'", (judged,)
                )
