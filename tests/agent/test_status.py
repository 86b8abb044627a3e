"""``ftl-agent status`` asks each table's owner; an owner opened by a reader never writes."""

from __future__ import annotations

import pytest

from ftlct.agent.inference.results import ResultStore
from ftlct.agent.status import collect_status
from ftlct.agent.store.database import Database
from tests.agent.federation_support import site_with_embeddings


def test_status_of_an_index_only_the_store_wrote_reads_the_missing_stages_as_empty(tmp_path):
    layout, records = site_with_embeddings(tmp_path / "agent", per_class=1, slices=2)
    db = Database(layout.index, create=False)
    try:
        status = collect_status(db)
        tables = {r["name"] for r in db.query("SELECT name FROM sqlite_master")}
    finally:
        db.close()
    assert status["instances_stored"] == 4 and status["series"]["open"] == len(records)
    assert status["series_inferred"] == 0 and status["jobs_failed"] == 0
    assert status["queues"] == {"open_series": 2, "inference": 0, "delivery": 0}
    assert status["outbox"] == 0 and status["labels"] == 0
    assert "jobs" not in tables and "results" not in tables  # reading created nothing


def test_schema_changes_inside_a_transaction_are_refused(tmp_path):
    db = Database(tmp_path / "index.sqlite")
    try:
        with pytest.raises(RuntimeError, match="inside a transaction"), db.transaction():
            ResultStore(db)  # executescript would have committed the open transaction
        assert not db.has_table("results")
    finally:
        db.close()
