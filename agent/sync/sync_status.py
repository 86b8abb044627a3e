"""The ``federation`` part of ``ftl-agent status --json``, read from the index (works beside serve)."""

from __future__ import annotations

import json
import time

from ftlct.agent.privacy.ledger import PrivacyLedger
from ftlct.agent.store.database import Database
from ftlct.agent.sync.federation_store import FederationStore

STALE_HEARTBEAT_S = 15.0  # serve writes one every 2 s; older means it is not running


def federation_status(db: Database) -> dict:
    """Connection, rounds, updates, installed and refused models, privacy spent."""
    heartbeat = float(db.get_meta("sync.heartbeat_at") or 0)
    connected = db.get_meta("sync.connected") == "1" and time.time() - heartbeat < STALE_HEARTBEAT_S
    report: dict = {
        "site": db.get_meta("federation.site"),
        "federation": db.get_meta("federation.name"),
        "connected": connected,
        "last_round": None,
        "round_status": None,
        "global_versions": {},
        "updates_made": 0,
        "updates_acknowledged": 0,
        "gate_refusals": 0,
        "models_refused": 0,
        "rounds_refused": int(db.get_meta("sync.rounds_refused") or 0),
        "last_model_event": None,
        "last_training": None,
        "training_waiting_for": db.get_meta("training.last_skip") or None,
        "privacy": privacy_spent(db),
    }
    if not db.has_table("fed_messages"):
        return report
    fed = FederationStore(db, create=False)
    announcement = fed.load_round()
    if announcement is not None:
        report["last_round"] = announcement.round
        report["round_status"] = announcement.status
    report["global_versions"] = fed.model_versions()
    counts = db.query_one(
        "SELECT COUNT(*) AS made, COUNT(acked_at) AS acked FROM federation_updates"
    )
    report["updates_made"], report["updates_acknowledged"] = counts["made"], counts["acked"]
    events = {
        row["outcome"]: row["n"]
        for row in db.query("SELECT outcome, COUNT(*) AS n FROM model_events GROUP BY outcome")
    }
    report["gate_refusals"] = events.get("gate_refused", 0)
    report["models_refused"] = events.get("refused", 0)
    last = db.query_one("SELECT * FROM model_events ORDER BY id DESC LIMIT 1")
    if last is not None:
        report["last_model_event"] = {
            "version": last["version"],
            "outcome": last["outcome"],
            "reason": last["reason"],
        }
    run = db.query_one("SELECT * FROM training_runs ORDER BY id DESC LIMIT 1")
    if run is not None:
        report["last_training"] = {
            "round": run["round"],
            "outcome": run["outcome"],
            "reason": run["reason"] or None,
            "metrics": json.loads(run["metrics"] or "{}"),
        }
    report["privacy"] = privacy_spent(db)
    return report


def privacy_spent(db: Database) -> dict:
    """epsilon per round and in total, with the settings serve/train recorded."""
    return PrivacyLedger(db, create=False).spent()
