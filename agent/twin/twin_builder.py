"""Build the twin state (``protocol.twin_state.TwinState``) from what the serve process knows.

Every field is a count, a version, a duration or an aggregate over series or
over recent slices (``feature_stats``); the closed schema
(``validate_twin_state``) is checked before anything is sent.
"""

from __future__ import annotations

import time

import numpy as np

from ftlct import agent as agent_package
from ftlct.agent.inference.results import ResultStore
from ftlct.agent.series.series_index import SeriesIndex
from ftlct.agent.store.database import Database
from ftlct.agent.sync.sync_status import privacy_spent
from ftlct.agent.twin.scanner_profile import scanner_profile
from ftlct.protocol.twin_state import (
    FeatureStats,
    Latency,
    PrivacyBudget,
    QueueDepths,
    TwinCounts,
    TwinState,
    validate_twin_state,
)

LATENCY_WINDOW = 200  # the most recent results the percentiles are taken over


def agent_version() -> str:
    try:
        from importlib.metadata import version

        return version("ftl-ct")
    except Exception:  # not installed as a distribution (a bare checkout)
        return getattr(agent_package, "__version__", "0")


def latency(results: ResultStore) -> Latency:
    values = np.asarray(results.recent_latencies(LATENCY_WINDOW), dtype=np.float64)
    if values.size == 0:
        return Latency()
    return Latency(
        p50_s=round(float(np.percentile(values, 50)), 3),
        p95_s=round(float(np.percentile(values, 95)), 3),
    )


def activity(status: dict, training: bool) -> str:
    if training:
        return "training"
    if status["queues"]["inference"]:
        return "inferring"
    if status["queues"]["open_series"]:
        return "receiving"
    return "idle"


def build_twin_state(
    db: Database,
    status: dict,
    model_version: str,
    training: bool,
    started_at: float,
    feature_stats: FeatureStats | None = None,
) -> TwinState:
    """``status`` is ``collect_status(db)`` (the ``ftl-agent status`` object);
    ``feature_stats`` is ``twin.feature_stats.recent_feature_stats`` (None: left out)."""
    fed = status["federation"]
    spent = privacy_spent(db)
    state = TwinState(
        status=activity(status, training),
        agent_version=agent_version(),
        model_version=model_version,
        counts=TwinCounts(
            instances_stored=status["instances_stored"],
            series_complete=status["series_complete"],
            series_inferred=status["series_inferred"],
            quarantined=status["quarantined"],
            labels=status["labels"],
            rounds_trained=fed["updates_made"],
            updates_sent=fed["updates_acknowledged"],
            gate_refusals=fed["gate_refusals"],
        ),
        queue_depths=QueueDepths(
            assembling=status["queues"]["open_series"],
            inference=status["queues"]["inference"],
            training=1 if training else 0,
            results=status["queues"]["delivery"],
        ),
        latency=latency(ResultStore(db, create=False)),
        outbox=status["outbox"],
        privacy=PrivacyBudget(
            epsilon_spent=round(spent["epsilon_spent"], 6),
            epsilon_limit=spent["epsilon_limit"] if spent["enabled"] else 0.0,
            delta=spent["delta"] if spent["enabled"] else 0.0,
            epsilon_last_round=round(spent["epsilon_last_round"], 6),
            rounds=spent["rounds"],
        ),
        scanner=scanner_profile(SeriesIndex(db, create=False)),
        uptime_s=round(max(0.0, time.time() - started_at), 1),
        feature_stats=feature_stats,
    )
    return validate_twin_state(state.to_json())
