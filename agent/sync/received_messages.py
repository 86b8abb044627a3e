"""The last verified ``rounds/current``, each cluster's global model and best model, as the
signed bytes received: the ``fed_messages`` table, owned here.

Only the inbox writes, after verifying (``sync.inbox``); ``ftl-agent train``
plans offline from what is kept, and status reads the round and versions.
"""

from __future__ import annotations

import time

from ftlct.agent.store.database import Database
from ftlct.protocol.exchange import peek
from ftlct.protocol.messages import GlobalModel, RoundAnnouncement, body_to_tensors

SCHEMA = """
CREATE TABLE IF NOT EXISTS fed_messages (
    kind TEXT NOT NULL,            -- round, model, best
    subject TEXT NOT NULL,         -- '' for the round, the cluster for a model
    version TEXT NOT NULL,         -- round number or model version
    payload BLOB NOT NULL,         -- the signed envelope as received (verified before storing)
    received_at REAL NOT NULL,
    PRIMARY KEY (kind, subject)
);
"""
ROUND = "round"
MODEL = "model"
BEST = "best"  # the cluster's best version by validation (best/{cluster})


class ReceivedMessages:
    def __init__(self, db: Database, create: bool = True):
        """``create=False`` for readers (``ftl-agent status``): no DDL, and an index that
        never heard from a cloud reads as empty."""
        self.db = db
        self._exists = db.adopt(SCHEMA, "fed_messages", create)

    def save_round(self, payload: bytes, announcement: RoundAnnouncement) -> None:
        self._save(ROUND, "", str(announcement.round), payload)

    def save_model(self, payload: bytes, model: GlobalModel, best: bool = False) -> None:
        self._save(BEST if best else MODEL, model.cluster, model.version, payload)

    def _save(self, kind: str, subject: str, version: str, payload: bytes) -> None:
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO fed_messages (kind, subject, version, payload, received_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (kind, subject, version, payload, time.time()),
            )

    def load_round(self) -> RoundAnnouncement | None:
        """The last round announcement received (verified when it arrived)."""
        payload = self._payload(ROUND, "")
        return None if payload is None else RoundAnnouncement.from_payload(peek(payload).payload)

    def load_model(self, cluster: str, best: bool = False) -> GlobalModel | None:
        """The last global model (or best model) received for ``cluster`` (verified when it
        arrived)."""
        payload = self._payload(BEST if best else MODEL, cluster)
        if payload is None:
            return None
        envelope = peek(payload)
        return GlobalModel.from_payload(envelope.payload, body_to_tensors(envelope.body))

    def model_versions(self) -> dict[str, str]:
        if not self._exists:
            return {}
        rows = self.db.query("SELECT subject, version FROM fed_messages WHERE kind = ?", (MODEL,))
        return {row["subject"]: row["version"] for row in rows}

    def _payload(self, kind: str, subject: str) -> bytes | None:
        if not self._exists:
            return None
        row = self.db.query_one(
            "SELECT payload FROM fed_messages WHERE kind = ? AND subject = ?", (kind, subject)
        )
        return None if row is None else bytes(row["payload"])
