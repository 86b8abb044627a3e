"""Whether ``serve`` is connected to the broker, as ``ftl-agent status`` (another process) sees it.

Owns the ``sync.connected`` and ``sync.heartbeat_at`` meta keys: serve beats every
``HEARTBEAT_S``; a beat older than ``STALE_HEARTBEAT_S`` means serve is not running.
"""

from __future__ import annotations

import time

from ftlct.agent.store.database import Database

HEARTBEAT_S = 2.0
STALE_HEARTBEAT_S = 15.0


class Heartbeat:
    def __init__(self, db: Database, clock=time.monotonic):
        self.db = db
        self.clock = clock
        self._next = 0.0

    def beat(self, connected: bool) -> None:
        self.db.set_meta_many(
            {"sync.connected": "1" if connected else "0", "sync.heartbeat_at": repr(time.time())}
        )

    def beat_if_due(self, connected: bool) -> None:
        now = self.clock()
        if now >= self._next:
            self._next = now + HEARTBEAT_S
            self.beat(connected)


def connected(db: Database) -> bool:
    """The last beat said connected, and it is recent."""
    at = float(db.get_meta("sync.heartbeat_at") or 0)
    return db.get_meta("sync.connected") == "1" and time.time() - at < STALE_HEARTBEAT_S
