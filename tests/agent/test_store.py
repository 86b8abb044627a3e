"""The store: durable before success, idempotent duplicates, the conflict policy, refusals kept
in quarantine (within its quota), recovery after a crash."""

from __future__ import annotations

import json
import signal
import sqlite3
from contextlib import contextmanager

import pytest

from ftlct.agent.series.series_index import SeriesIndex
from ftlct.agent.status import collect_status
from ftlct.agent.store.database import Database
from ftlct.agent.store.disk import DiskGuard
from ftlct.agent.store.instance_store import InstanceStore, Outcome
from ftlct.agent.store.layout import DataDir
from ftlct.agent.store.quarantine import QuarantineLimits
from ftlct.export.files import sha256_bytes, sha256_file
from tests.agent.dicom_files import ct_instance, garbage_part10, part10_bytes, with_changes
from tests.agent.store_crash import CRASH_POINTS, run_crashing_replacement

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


def open_store(root, disk, db_class=Database, **options) -> InstanceStore:
    data_dir = DataDir(root).create()
    db = db_class(data_dir.index)
    guard = DiskGuard(disk, min_free_bytes=10**6)
    return InstanceStore(data_dir, db, guard, series=SeriesIndex(db), **options)


@pytest.fixture
def store(tmp_path, disk):
    store = open_store(tmp_path / "data", disk)
    yield store
    store.db.close()


@pytest.fixture
def replacing_store(tmp_path, disk):
    store = open_store(tmp_path / "data", disk, on_conflict="replace")
    yield store
    store.db.close()


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


def test_with_replace_new_bytes_for_a_known_instance_replace_it_and_reopen_the_series(
    replacing_store,
):
    store = replacing_store
    ds = ct_instance()
    first = store.put(part10_bytes(ds))
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
    # the old copy went once the index named the new one; nothing else is left
    assert not store.path_of({"path": first.instance.path}).exists()
    assert files_under(store.data_dir.instances) == [store.path_of({"path": result.instance.path})]


def test_by_default_a_resent_uid_with_other_bytes_keeps_the_first_and_counts_the_conflict(store):
    ds = ct_instance()
    original = part10_bytes(ds)
    first = store.put(original)
    store.db.set_meta("unrelated", "x")
    changed = part10_bytes(with_changes(ds, WindowCenter=100))
    result = store.put(changed, calling_ae="PACS2")
    assert result.outcome is Outcome.CONFLICT
    assert result.ok  # the sender's instance is stored: its status is success
    assert result.instance.path == first.instance.path
    assert store.path_of({"path": first.instance.path}).read_bytes() == original
    series = store.db.query_one("SELECT * FROM series")
    assert series["generation"] == 1  # nothing re-opened
    (entry,) = store.quarantine.entries()
    assert (entry["outcome"], entry["sop_instance_uid"]) == ("conflict", ds.SOPInstanceUID)
    assert store.quarantine.path_of(entry).read_bytes() == changed
    assert collect_status(store.db)["quarantine"]["conflicts"] == 1
    assert files_under(store.data_dir.incoming) == []


class CommitFails(Database):
    """An index whose next write transaction fails at COMMIT (a full disk, an I/O error)."""

    fail_next = False

    @contextmanager
    def transaction(self):
        if not self.fail_next:
            with super().transaction() as conn:
                yield conn
            return
        self.fail_next = False
        with self._lock:
            self._conn.execute(self._begin)
            try:
                yield self._conn
            finally:
                self._conn.execute("ROLLBACK")
            raise sqlite3.OperationalError("disk I/O error (injected at COMMIT)")


def test_a_failed_commit_during_a_replacement_leaves_the_acknowledged_copy_whole(tmp_path, disk):
    store = open_store(tmp_path / "data", disk, CommitFails, on_conflict="replace")
    ds = ct_instance()
    original = part10_bytes(ds)
    assert store.put(original).outcome is Outcome.STORED
    store.db.fail_next = True
    with pytest.raises(sqlite3.OperationalError):  # the SCP answers 0xA700
        store.put(part10_bytes(with_changes(ds, WindowCenter=100)))
    row = store.instance(ds.SOPInstanceUID)
    path = store.path_of(row)
    assert path.read_bytes() == original  # the acknowledged instance is intact
    assert sha256_file(path) == row["sha256"]
    assert files_under(store.data_dir.instances) == [path]  # the new copy did not stay
    assert files_under(store.data_dir.incoming) == []
    store.db.close()


@pytest.mark.parametrize("crash_at", CRASH_POINTS)
def test_a_crash_at_any_step_of_a_replacement_leaves_one_consistent_pair(tmp_path, disk, crash_at):
    """A real process replaces an instance and is SIGKILLed at one step; recovery then finds
    the old pair or the new pair whole, never a mix, and no second copy."""
    root = tmp_path / "data"
    store = open_store(root, disk, on_conflict="replace")
    ds = ct_instance()
    original = part10_bytes(ds)
    store.put(original)
    store.db.close()
    new = part10_bytes(with_changes(ds, WindowCenter=100))
    (tmp_path / "new.dcm").write_bytes(new)
    child = run_crashing_replacement(root, tmp_path / "new.dcm", crash_at)
    assert child.returncode == -signal.SIGKILL, child.stderr

    store = open_store(root, disk, on_conflict="replace")
    store.recover()
    row = store.instance(ds.SOPInstanceUID)
    path = store.path_of(row)
    expected = original if crash_at in ("before_rename", "before_commit") else new
    assert path.read_bytes() == expected
    assert sha256_file(path) == row["sha256"]
    assert files_under(store.data_dir.instances) == [path]
    assert files_under(store.data_dir.incoming) == []
    assert store.put(expected).outcome is Outcome.DUPLICATE
    store.db.close()


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


def test_quarantine_keeps_no_bytes_below_twice_the_watermark(store, disk):
    # The band between one and two watermarks is for good instances, never for refusals.
    disk.free = 2 * 10**6 - 10
    result = store.put(garbage_part10(b"\xff" * 64))
    assert result.outcome is Outcome.UNREADABLE
    (entry,) = store.quarantine.entries()
    assert entry["id"] == result.quarantine_id
    assert entry["path"] is None
    assert "bytes not kept: disk below twice the storage watermark" in entry["reason"]
    assert files_under(store.data_dir.quarantine) == []
    assert files_under(store.data_dir.incoming) == []


def garbage(n: int, size: int = 20_000) -> list[bytes]:
    return [garbage_part10(bytes([k]) * size) for k in range(n)]


def test_quarantine_stays_within_its_byte_quota_evicting_the_oldest_first(tmp_path, disk):
    limits = QuarantineLimits(max_bytes=100_000, max_entries=1000)
    store = open_store(tmp_path / "data", disk, quarantine_limits=limits)
    payloads = garbage(12)
    for data in payloads:
        assert store.put(data).outcome is Outcome.UNREADABLE
    on_disk = sum(p.stat().st_size for p in files_under(store.data_dir.quarantine))
    assert on_disk <= limits.max_bytes
    kept = store.quarantine.entries()
    summary = collect_status(store.db)["quarantine"]
    assert summary["kept"] == len(kept) < len(payloads)
    assert summary["evicted"] == len(payloads) - len(kept)
    assert collect_status(store.db)["quarantined"] == len(payloads)  # every refusal counted
    # the newest stay, oldest first out
    assert [store.quarantine.path_of(e).read_bytes() for e in kept] == payloads[-len(kept) :]
    store.db.close()


def test_quarantine_remembers_at_most_max_entries_refusals(tmp_path, disk):
    limits = QuarantineLimits(max_bytes=10**9, max_entries=5)
    store = open_store(tmp_path / "data", disk, quarantine_limits=limits)
    for data in garbage(8, size=100):
        store.put(data)
    assert len(store.quarantine.entries()) == 5
    assert len(files_under(store.data_dir.quarantine)) == 10  # dataset + reason each
    summary = collect_status(store.db)["quarantine"]
    assert (summary["kept"], summary["evicted"]) == (5, 3)
    store.db.close()


def test_a_refusal_larger_than_the_whole_quota_keeps_only_its_reason(tmp_path, disk):
    store = open_store(tmp_path / "data", disk, quarantine_limits=QuarantineLimits(10_000, 10))
    result = store.put(garbage(1, size=50_000)[0])
    assert result.outcome is Outcome.UNREADABLE
    (entry,) = store.quarantine.entries()
    assert entry["path"] is None and "quarantine quota" in entry["reason"]
    assert files_under(store.data_dir.quarantine) == []
    store.db.close()


def test_recover_drops_unacknowledged_temp_files_and_indexes_orphans(store):
    ds = ct_instance()
    data = part10_bytes(ds)
    # A crash after the rename but before the index commit leaves this:
    relpath = store.data_dir.instance_relpath(
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, sha256_bytes(data)
    )
    orphan = store.data_dir.root / relpath
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(data)
    (store.data_dir.incoming / "tmpabc.part").write_bytes(b"half an instance")
    report = store.recover()
    assert report == {
        "temp_removed": 1,
        "orphans_indexed": 1,
        "stale_removed": 0,
        "quarantine_orphans_removed": 0,
    }
    assert store.count() == 1
    assert store.put(data).outcome is Outcome.DUPLICATE


def test_concurrent_stores_are_each_stored_whole_and_indexed(store):
    import threading

    instances = [ct_instance() for _ in range(12)]
    payloads = [part10_bytes(ds) for ds in instances]
    outcomes: list = [None] * len(payloads)

    def put(index):
        outcomes[index] = store.put(payloads[index]).outcome

    threads = [threading.Thread(target=put, args=(i,)) for i in range(len(payloads))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert outcomes == [Outcome.STORED] * len(payloads)
    for ds, data in zip(instances, payloads, strict=True):
        assert store.path_of(store.instance(ds.SOPInstanceUID)).read_bytes() == data
    assert store.commits.writes == len(payloads)
    assert 1 <= store.commits.batches <= len(payloads)


def test_committed_reads_neither_wait_for_a_writer_nor_see_its_uncommitted_rows(store):
    """The store's own reads outside a write (the duplicate pre-check, the stored instance's
    record) must not queue behind another association's group commit, which holds the lock
    through its fsyncs and COMMIT; and they must never report a row that may yet roll back."""
    import threading

    first, second = ct_instance(), ct_instance()
    store.put(part10_bytes(first))
    holding, release = threading.Event(), threading.Event()

    def slow_writer():
        with store.db.transaction() as conn:
            conn.execute(
                "UPDATE instances SET sha256 = 'not yet' WHERE sop_instance_uid = ?",
                (first.SOPInstanceUID,),
            )
            holding.set()
            release.wait(30)  # a COMMIT on its way to a slow disk

    writer = threading.Thread(target=slow_writer)
    writer.start()
    seen = {}

    def reads():
        seen["first"] = store.index.lookup(None, first.SOPInstanceUID)["sha256"]
        seen["record"] = store.index.get_committed(first.SOPInstanceUID)["sha256"]
        seen["second"] = store.index.lookup(None, second.SOPInstanceUID)

    reader = threading.Thread(target=reads, daemon=True)
    try:
        assert holding.wait(30)
        reader.start()
        reader.join(10)  # answered while the writer holds the lock, from what was committed
        assert not reader.is_alive(), "the read waited for the writer's transaction"
    finally:
        release.set()
        writer.join()
    assert seen["first"] != "not yet" and seen["record"] != "not yet"
    assert seen["second"] is None
    assert store.index.get_committed(first.SOPInstanceUID)["sha256"] == "not yet"  # committed now


def test_write_transactions_hold_the_writers_flock_that_other_processes_wait_on(tmp_path):
    """Receive workers commit to the same index: a writer in another process waits on
    ``index.sqlite.lock`` (woken by the kernel) instead of polling SQLite's write lock."""
    import fcntl
    import os
    import stat

    db = Database(tmp_path / "index.sqlite")
    lock_path = tmp_path / "index.sqlite.lock"
    other = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)  # as another process's handle

    def free() -> bool:
        try:
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(other, fcntl.LOCK_UN)
        return True

    try:
        assert free()
        with db.transaction() as conn:
            conn.execute("INSERT INTO meta (key, value) VALUES ('k', 'v')")
            assert not free()  # held from BEGIN to COMMIT
        assert free()
        with pytest.raises(sqlite3.IntegrityError), db.transaction() as conn:
            conn.execute("INSERT INTO meta (key, value) VALUES ('k', 'again')")
        assert free()  # and released after a ROLLBACK
        assert stat.S_IMODE(lock_path.stat().st_mode) == 0o600
    finally:
        os.close(other)
        db.close()
    reader = Database(tmp_path / "index.sqlite", create=False)
    lock_path.unlink()
    assert reader.get_meta("k") == "v"
    reader.close()
    assert not lock_path.exists()  # a read-only handle never creates it
