"""The ``federation`` part of ``ftl-agent status --json``: asked of each owner (works beside serve)."""

from __future__ import annotations

import time

from ftlct.agent.privacy.ledger import PrivacyLedger
from ftlct.agent.store.database import Database
from ftlct.agent.sync.model_events import ModelEvents
from ftlct.agent.sync.outbox import Outbox
from ftlct.agent.sync.received_messages import ReceivedMessages
from ftlct.agent.sync.training_log import TrainingLog

STALE_HEARTBEAT_S = 15.0  # serve writes one every 2 s; older means it is not running


def federation_status(db: Database) -> dict:
    """Connection, rounds, updates, installed and refused models, privacy spent."""
    heartbeat = float(db.get_meta("sync.heartbeat_at") or 0)
    connected = db.get_meta("sync.connected") == "1" and time.time() - heartbeat < STALE_HEARTBEAT_S
    received = ReceivedMessages(db, create=False)
    announcement = received.load_round()
    made, acknowledged = Outbox(db, create=False).made_and_acknowledged()
    events = ModelEvents(db, create=False)
    outcomes = events.counts_by_outcome()
    return {
        "site": db.get_meta("federation.site"),
        "federation": db.get_meta("federation.name"),
        "connected": connected,
        "last_round": announcement.round if announcement else None,
        "round_status": announcement.status if announcement else None,
        "global_versions": received.model_versions(),
        "updates_made": made,
        "updates_acknowledged": acknowledged,
        "gate_refusals": outcomes.get("gate_refused", 0),
        "models_refused": outcomes.get("refused", 0),
        "rounds_refused": int(db.get_meta("sync.rounds_refused") or 0),
        "last_model_event": events.last(),
        "last_training": TrainingLog(db, create=False).last(),
        "training_waiting_for": db.get_meta("training.last_skip") or None,
        "privacy": privacy_spent(db),
    }


def privacy_spent(db: Database) -> dict:
    """epsilon per round and in total, with the settings serve/train recorded."""
    return PrivacyLedger(db, create=False).spent()
