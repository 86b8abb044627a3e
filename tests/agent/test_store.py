"""The store: durable before success, idempotent duplicates, refusals kept in quarantine."""

from __future__ import annotations

import json
import sqlite3

import pytest

from ftlct.agent.series.series_index import SeriesIndex
from ftlct.agent.store.database import Database
from ftlct.agent.store.disk import DiskGuard
from ftlct.agent.store.instance_store import InstanceStore, Outcome
from ftlct.agent.store.layout import DataDir
from tests.agent.dicom_files import ct_instance, garbage_part10, part10_bytes, with_changes

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom on broken input

PLENTY = 10**15


class FakeDisk:
    def __init__(self, free: int = PLENTY):
        self.free = free

    def __call__(self) -> int:
        return self.free


@pytest.fixture
def disk():
    return FakeDisk()


@pytest.fixture
def store(tmp_path, disk):
    data_dir = DataDir(tmp_path / "data").create()
    db = Database(data_dir.index)
    yield InstanceStore(data_dir, db, DiskGuard(disk, min_free_bytes=10**6), series=SeriesIndex(db))
    db.close()


def files_under(path):
    return sorted(p for p in path.rglob("*") if p.is_file())


def test_stored_bytes_are_exactly_what_was_received_and_indexed(store):
    ds = ct_instance()
    data = part10_bytes(ds)
    result = store.put(
        data,
        announced_sop_class=ds.SOPClassUID,
        announced_sop_instance=ds.SOPInstanceUID,
        calling_ae="PACS",
    )
    assert result.outcome is Outcome.STORED
    assert store.path_of({"path": result.instance.path}).read_bytes() == data
    row = store.instances_of(ds.SeriesInstanceUID)[0]
    assert (row["sop_instance_uid"], row["modality"], row["rows"], row["calling_ae"]) == (
        ds.SOPInstanceUID,
        "CT",
        128,
        "PACS",
    )


def test_acknowledged_means_committed_for_any_other_reader(store):
    """When put returns, a fresh connection (another process) sees the row and the file."""
    ds = ct_instance()
    store.put(part10_bytes(ds))
    with sqlite3.connect(store.data_dir.index) as other:
        (path,) = other.execute(
            "SELECT path FROM instances WHERE sop_instance_uid = ?", (ds.SOPInstanceUID,)
        ).fetchone()
    assert (store.data_dir.root / path).is_file()
    assert files_under(store.data_dir.incoming) == []  # no temp file left behind


def test_file_names_carry_no_patient_data(store):
    ds = ct_instance(patient_name="SMITH^JOHN", patient_id="MRN12345")
    result = store.put(part10_bytes(ds))
    path = store.data_dir.resolve(result.instance.path)
    assert path.is_relative_to(store.data_dir.root)
    for forbidden in ("SMITH", "JOHN", "MRN12345", ds.SOPInstanceUID, ds.SeriesInstanceUID):
        assert forbidden not in str(path)


def test_duplicate_instance_is_idempotent(store):
    ds = ct_instance()
    data = part10_bytes(ds)
    first = store.put(data)
    second = store.put(data)
    assert (first.outcome, second.outcome) == (Outcome.STORED, Outcome.DUPLICATE)
    assert second.ok
    assert store.count() == 1
    series = store.db.query_one("SELECT * FROM series")
    assert series["n_instances"] == 1
    assert series["generation"] == 1  # a resend changes nothing


def test_new_bytes_for_a_known_instance_replace_it_and_reopen_the_series(store):
    ds = ct_instance()
    store.put(part10_bytes(ds))
    with store.db.transaction() as conn:
        conn.execute("UPDATE series SET state = 'inferred'")
    changed = with_changes(ds, WindowCenter=100)
    result = store.put(part10_bytes(changed))
    assert result.outcome is Outcome.REPLACED
    assert result.instance.series_reopened
    assert store.count() == 1
    stored = store.path_of({"path": result.instance.path}).read_bytes()
    assert stored == part10_bytes(changed)
    series = store.db.query_one("SELECT * FROM series")
    assert (series["state"], series["n_instances"], series["generation"]) == ("open", 1, 2)


def test_below_the_watermark_nothing_is_written(store, disk):
    disk.free = 10**6 + 100  # less than watermark + the instance
    data = part10_bytes(ct_instance())
    result = store.put(data)
    assert result.outcome is Outcome.OUT_OF_RESOURCES
    assert "watermark" in result.reason
    assert store.count() == 0
    assert files_under(store.data_dir.instances) == []
    assert files_under(store.data_dir.incoming) == []


def test_a_failing_write_is_out_of_resources_and_leaves_no_index_row(store):
    store.data_dir.incoming.rmdir()
    store.data_dir.incoming.write_text("not a directory")  # every temp file fails
    result = store.put(part10_bytes(ct_instance()))
    assert result.outcome is Outcome.OUT_OF_RESOURCES
    assert store.count() == 0


def test_unparsable_dataset_is_quarantined_with_its_reason(store):
    data = garbage_part10(b"\x00\x01garbage that is no dataset" * 10)
    result = store.put(data, calling_ae="BROKEN")
    assert result.outcome is Outcome.UNREADABLE
    entry = store.quarantine.entries()[0]
    assert entry["outcome"] == "unreadable"
    assert "not a DICOM instance" in entry["reason"]
    assert store.quarantine.path_of(entry).read_bytes() == data
    sidecar = json.loads(store.quarantine.path_of(entry).with_suffix(".json").read_text())
    assert sidecar["reason"] == entry["reason"]
    assert sidecar["calling_ae"] == "BROKEN"
    assert store.count() == 0


@pytest.mark.parametrize(
    ("announced", "reason"),
    [
        ({"announced_sop_class": "1.2.840.10008.5.1.4.1.1.4"}, "SOP Class UID"),  # says MR
        ({"announced_sop_instance": "1.2.3.4"}, "SOP Instance UID"),
    ],
)
def test_dataset_not_matching_the_request_is_a_mismatch(store, announced, reason):
    result = store.put(part10_bytes(ct_instance()), **announced)
    assert result.outcome is Outcome.MISMATCH
    assert reason in result.reason
    assert store.quarantine.count() == 1
    assert store.count() == 0


def test_instance_without_series_uid_cannot_be_grouped(store):
    ds = ct_instance()
    del ds.SeriesInstanceUID
    result = store.put(part10_bytes(ds))
    assert result.outcome is Outcome.MISMATCH
    assert "Series Instance UID" in result.reason


def test_quarantine_below_watermark_keeps_the_reason_not_the_bytes(store, disk):
    disk.free = 10**6 + 10  # the disk filled up between the store's check and the quarantine
    entry_id = store.quarantine.keep(garbage_part10(b"\xff" * 64), "unreadable", "test reason")
    (entry,) = store.quarantine.entries()
    assert entry["id"] == entry_id
    assert entry["path"] is None
    assert entry["reason"].startswith("test reason (bytes not kept")
    assert files_under(store.data_dir.quarantine) == []


def test_recover_drops_unacknowledged_temp_files_and_indexes_orphans(store):
    ds = ct_instance()
    data = part10_bytes(ds)
    # A crash after the rename but before the index commit leaves this:
    relpath = store.data_dir.instance_relpath(
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
    )
    orphan = store.data_dir.root / relpath
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(data)
    (store.data_dir.incoming / "tmpabc.part").write_bytes(b"half an instance")
    report = store.recover()
    assert report == {"temp_removed": 1, "orphans_indexed": 1, "stale_removed": 0}
    assert store.count() == 1
    assert store.put(data).outcome is Outcome.DUPLICATE
