"""What ``ftl-agent status`` and ``ftl-agent results`` report, read from the data dir's index.

Readers only: safe beside a running ``ftl-agent serve`` (SQLite WAL). The serve
process uses the same functions for its own view (e.g. a digital twin).
"""

from __future__ import annotations

from ftlct.agent.inference.results import ResultStore
from ftlct.agent.labels.label_store import LabelStore
from ftlct.agent.reporting.deliveries import Deliveries
from ftlct.agent.series.jobs import JobQueue
from ftlct.agent.series.series_index import SeriesIndex
from ftlct.agent.store.database import Database
from ftlct.agent.store.instance_index import InstanceIndex
from ftlct.agent.store.quarantine import quarantine_summary
from ftlct.agent.sync.outbox import Outbox
from ftlct.agent.sync.sync_status import federation_status


def collect_status(db: Database) -> dict:
    """The ``status --json`` object: DESIGN.md keys first, then queue depths and detail."""
    series_by_state = SeriesIndex(db, create=False).counts_by_state()
    deliveries = Deliveries(db, create=False).counts_by_state()
    jobs = JobQueue(db, create=False).counts_by_state()
    instances = InstanceIndex(db, create=False)
    labels = LabelStore(db, create=False)
    quarantine = quarantine_summary(db)
    return {
        "instances_stored": instances.count(),
        # every series whose quiet period has passed, whatever came of it
        "series_complete": sum(n for state, n in series_by_state.items() if state != "open"),
        "series_inferred": ResultStore(db, create=False).series_with_result(),
        # every refusal recorded, also those the quota evicted since
        "quarantined": quarantine["kept"] + quarantine["evicted"],
        # labels and the update outbox exist once labels were set or federation ran
        "labels": labels.count(),
        "model_version": db.get_meta("model_version"),
        "outbox": Outbox(db, create=False).count(),
        "bytes_stored": instances.bytes_stored(),
        "series": {
            state: series_by_state.get(state, 0)
            for state in ("open", "complete", "inferred", "failed", "skipped")
        },
        "queues": {
            "open_series": series_by_state.get("open", 0),
            "inference": jobs.get("pending", 0) + jobs.get("running", 0),
            "delivery": deliveries.get("pending", 0),
        },
        "deliveries": {
            state: deliveries.get(state, 0) for state in ("pending", "sent", "failed", "superseded")
        },
        "jobs_failed": jobs.get("failed", 0),
        # kept entries and bytes, evictions, resent SOP Instances with other bytes
        "quarantine": quarantine,
        "labels_pending": labels.counts_by_level().get("pending", 0),
        "federation": federation_status(db),
    }


def list_results(db: Database) -> list[dict]:
    """The ``results --json`` list: the current result of every series, oldest first."""
    return [result.to_json() for result in ResultStore(db, create=False).current()]
