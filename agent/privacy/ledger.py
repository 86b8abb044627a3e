"""The privacy ledger: the zCDP cost of every noised delta this site released, and the
``[privacy]`` settings in force, so status and the twin report epsilon with them.

Owns the ``privacy_ledger`` table and the ``privacy.*`` meta keys. A release is
charged in the transaction that queues its update, so a crash never sends an
update without paying for it (nor pays for one never sent).
"""

from __future__ import annotations

import sqlite3

from ftlct.agent.privacy import mechanism
from ftlct.agent.settings import PrivacySettings
from ftlct.agent.store.database import Database

SCHEMA = """
CREATE TABLE IF NOT EXISTS privacy_ledger (
    update_id TEXT PRIMARY KEY,
    round INTEGER NOT NULL,
    rho REAL NOT NULL,             -- zCDP cost of this release
    clip_norm REAL NOT NULL,
    noise_multiplier REAL NOT NULL,
    created_at REAL NOT NULL
);
"""
DEFAULT_DELTA = 1e-5


class PrivacyLedger:
    def __init__(self, db: Database, create: bool = True):
        """``create=False`` for readers (``ftl-agent status``): no DDL, and an index that
        never released a noised delta reads as nothing spent."""
        self.db = db
        self._exists = db.adopt(SCHEMA, "privacy_ledger", create)

    def remember(self, settings: PrivacySettings) -> None:
        """Record the settings in force (serve and ``train`` do at start)."""
        self.db.set_meta_many(
            {
                "privacy.enabled": "1" if settings.enabled else "0",
                "privacy.delta": repr(settings.delta),
                "privacy.epsilon_limit": repr(settings.epsilon_limit),
            }
        )

    def charge(
        self,
        conn: sqlite3.Connection,
        update_id: str,
        round_no: int,
        rho: float,
        settings: PrivacySettings,
        now: float,
    ) -> None:
        """Book one release (inside the transaction that queues its update)."""
        conn.execute(
            "INSERT INTO privacy_ledger (update_id, round, rho, clip_norm, noise_multiplier,"
            " created_at) VALUES (?, ?, ?, ?, ?, ?)",
            (update_id, round_no, rho, settings.clip_norm, settings.noise_multiplier, now),
        )

    def rhos(self) -> list[float]:
        """The cost of each release, oldest first."""
        if not self._exists:
            return []
        return [
            r["rho"] for r in self.db.query("SELECT rho FROM privacy_ledger ORDER BY created_at")
        ]

    def rho_spent(self) -> float:
        return float(sum(self.rhos()))

    def spent(self) -> dict:
        """epsilon per round and in total (zCDP composition), with the settings recorded."""
        delta = float(self.db.get_meta("privacy.delta") or DEFAULT_DELTA)
        rhos = self.rhos()
        rho_total = sum(rhos)
        return {
            "enabled": self.db.get_meta("privacy.enabled") == "1",
            "epsilon_spent": mechanism.epsilon_of(rho_total, delta),
            "epsilon_last_round": mechanism.epsilon_of(rhos[-1], delta) if rhos else 0.0,
            "epsilon_limit": float(self.db.get_meta("privacy.epsilon_limit") or 0.0),
            "delta": delta,
            "rho_spent": rho_total,
            "rounds": len(rhos),
        }
