"""The ``federation`` part of ``ftl-agent status --json``: asked of each owner (works beside serve)."""

from __future__ import annotations

from ftlct.agent.privacy.ledger import PrivacyLedger
from ftlct.agent.store.database import Database
from ftlct.agent.sync import heartbeat
from ftlct.agent.sync.inbox import rounds_refused
from ftlct.agent.sync.local_rounds import rounds_refused_for_recipe, waiting_for
from ftlct.agent.sync.message_tally import message_counts
from ftlct.agent.sync.model_events import ModelEvents
from ftlct.agent.sync.outbox import Outbox
from ftlct.agent.sync.receipts import receipts_ignored
from ftlct.agent.sync.received_messages import ReceivedMessages
from ftlct.agent.sync.site_identity import recorded_names
from ftlct.agent.sync.training_log import TrainingLog


def federation_status(db: Database) -> dict:
    """Connection, rounds, updates, installed and refused models, privacy spent."""
    site, federation = recorded_names(db)
    received = ReceivedMessages(db, create=False)
    announcement = received.load_round()
    outbox = Outbox(db, create=False)
    made, acknowledged = outbox.made_and_acknowledged()
    events = ModelEvents(db, create=False)
    outcomes = events.counts_by_outcome()
    return {
        "site": site,
        "federation": federation,
        "connected": heartbeat.connected(db),
        "last_round": announcement.round if announcement else None,
        "round_status": announcement.status if announcement else None,
        "global_versions": received.model_versions(),
        "updates_made": made,
        "updates_acknowledged": acknowledged,  # by the cloud's receipt, not the broker
        "updates_pending": outbox.count(),  # in the outbox, resent until their receipt
        "updates_receipted": outbox.delivery_counts(),  # + unreceipted: round closed first
        "last_rejection": outbox.last_rejection(),
        "receipts_ignored": receipts_ignored(db),
        "messages": message_counts(db),  # every message from the cloud's topics, by outcome
        "gate_refusals": outcomes.get("gate_refused", 0),
        "models_refused": outcomes.get("refused", 0),
        "rounds_refused": rounds_refused(db),
        "recipes_refused": rounds_refused_for_recipe(db),  # rounds outside training.max_*
        "last_model_event": events.last(),
        "last_training": TrainingLog(db, create=False).last(),
        "training_waiting_for": waiting_for(db),
        "privacy": privacy_spent(db),
    }


def privacy_spent(db: Database) -> dict:
    """epsilon per round and in total, with the settings serve/train recorded."""
    return PrivacyLedger(db, create=False).spent()
