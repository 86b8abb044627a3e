"""The SCP handler layer in-process, against a pynetdicom SCU: statuses, limits, and clean logs."""

from __future__ import annotations

import hashlib
import io
import json
import logging

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification

from ftlct.agent.dicom.scp import StorageScp
from ftlct.agent.dicom.status_codes import store_status
from ftlct.agent.events import INSTANCE_STORED, EventBus
from ftlct.agent.logs import JsonFormatter
from ftlct.agent.metrics import AgentMetrics
from ftlct.agent.series.series_index import SeriesIndex
from ftlct.agent.settings import DicomSettings, TlsSettings
from ftlct.agent.store.database import Database
from ftlct.agent.store.disk import DiskGuard
from ftlct.agent.store.instance_store import InstanceStore, Outcome
from ftlct.agent.store.layout import DataDir
from tests.agent.dicom_files import ct_instance, garbage_part10, part10_bytes
from tests.support.dicom_peers import raw_file_sending, wait_for
from tests.support.ports import LOOPBACK, free_port

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture
def scp(tmp_path):
    data_dir = DataDir(tmp_path / "data").create()
    db = Database(data_dir.index)
    guard = DiskGuard(lambda: 10**15, 0)
    store = InstanceStore(data_dir, db, guard, series=SeriesIndex(db))
    events = EventBus()
    stored = []
    events.subscribe(INSTANCE_STORED, stored.append)
    settings = DicomSettings(port=free_port(), max_associations=1, max_pdu=32768)
    server = StorageScp(settings, TlsSettings(), store, guard, events, AgentMetrics())
    server.start()
    server.stored = stored
    yield server
    server.stop(drain_timeout_s=2)
    db.close()


def associate(scp, *contexts):
    ae = AE(ae_title="SCU")
    for context in contexts or (CTImageStorage,):
        ae.add_requested_context(context)
    return ae.associate(LOOPBACK, scp.settings.port, ae_title="FTLCT")


def send_bytes(scp, tmp_path, data: bytes) -> int:
    """C-STORE a Part-10 byte stream exactly as given (file meta decides the request)."""
    path = tmp_path / "payload.dcm"
    path.write_bytes(data)
    assoc = associate(scp)
    try:
        with raw_file_sending():
            return int(assoc.send_c_store(path).Status)
    finally:
        assoc.release()


def test_success_only_for_stored_instances_and_the_right_failure_otherwise(scp, tmp_path):
    ds = ct_instance()
    assert send_bytes(scp, tmp_path, part10_bytes(ds)) == 0x0000
    assert [i.sop_instance_uid for i in scp.stored] == [ds.SOPInstanceUID]
    assert send_bytes(scp, tmp_path, part10_bytes(ds)) == 0x0000  # duplicate: idempotent
    assert send_bytes(scp, tmp_path, garbage_part10(b"\x01\x02" * 200)) == 0xC000
    other = ct_instance()
    data = part10_bytes(other)
    # announce another SOP Instance UID in the file meta than the dataset holds
    wrong = data.replace(
        other.SOPInstanceUID.encode(), b"1.2.3.4".ljust(len(other.SOPInstanceUID), b"5"), 1
    )
    assert send_bytes(scp, tmp_path, wrong) == 0xA900
    assert scp.store.count() == 1
    assert scp.store.quarantine.count() == 2


def test_echo_pdu_limit_and_association_limit(scp):
    first = associate(scp, Verification)
    try:
        assert first.is_established
        assert int(first.send_c_echo().Status) == 0x0000
        assert first.acceptor.maximum_length == 32768
        second = associate(scp, Verification)
        assert second.is_rejected  # max_associations = 1
    finally:
        first.release()


def test_a_sender_that_reassociates_at_once_after_a_release_is_never_refused(scp):
    """max_associations counts open associations, not threads still ending: one association
    per instance, each opened right after the previous release, against a limit of 1."""
    for _ in range(20):
        assoc = associate(scp, Verification)
        assert assoc.is_established
        assert int(assoc.send_c_echo().Status) == 0x0000
        assoc.release()


def test_logs_carry_no_patient_data(scp, tmp_path):
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        ds = ct_instance(patient_name="SMITH^JOHN", patient_id="MRN-99881")
        ds.PatientBirthDate = "19450101"
        assert send_bytes(scp, tmp_path, part10_bytes(ds)) == 0x0000
        del ds.SeriesInstanceUID  # refused (and the refusal logged) with the same patient
        assert send_bytes(scp, tmp_path, part10_bytes(ds)) == 0xA900
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    text = stream.getvalue()
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    events = [line["event"] for line in lines]
    assert "instance_stored" in events and "instance_refused" in events
    for secret in ("SMITH", "JOHN", "MRN-99881", "19450101"):
        assert secret not in text


def test_a_dataset_is_aborted_when_the_disk_reaches_the_watermark_while_it_arrives(tmp_path):
    """The watermark is checked fragment by fragment, before each one is written."""
    data_dir = DataDir(tmp_path / "data").create()
    db = Database(data_dir.index)
    watermark = 10**9

    def free_bytes():
        # the disk "fills" once 2 MiB of a dataset have arrived
        written = sum(p.stat().st_size for p in data_dir.incoming.iterdir() if p.is_file())
        return watermark * 2 if written < 2 * 2**20 else watermark - 1

    guard = DiskGuard(free_bytes, watermark)
    store = InstanceStore(data_dir, db, guard, series=SeriesIndex(db))
    settings = DicomSettings(port=free_port(), max_pdu=32768)
    server = StorageScp(settings, TlsSettings(), store, guard, EventBus(), AgentMetrics())
    server.start()
    try:
        ds = ct_instance()
        ds.Rows, ds.Columns = 2048, 2048
        ds.PixelData = bytes(2048 * 2048 * 2)  # 8 MiB
        path = tmp_path / "big.dcm"
        path.write_bytes(part10_bytes(ds))
        assoc = associate(server)
        with raw_file_sending():
            status = assoc.send_c_store(path)
        assert not status  # no status: the association was aborted mid-dataset
        wait_for(lambda: assoc.is_aborted, timeout=20)
        assert store.count() == 0
        (entry,) = store.quarantine.entries()
        assert entry["outcome"] == "aborted" and "watermark" in entry["reason"]
        assert 2 * 2**20 <= entry["size"] < 3 * 2**20
        wait_for(lambda: not list(data_dir.incoming.iterdir()), timeout=10)
        # with room again, the next one is stored
        assert send_bytes(server, tmp_path, part10_bytes(ct_instance())) == 0x0000
    finally:
        server.stop(drain_timeout_s=2)
        db.close()


def test_every_store_outcome_has_a_status():
    assert {store_status(outcome) for outcome in Outcome} <= {0x0000, 0xA700, 0xA900, 0xC000}


def test_serving_polls_pynetdicom_promptly_after_a_store_and_stopping_restores_it(tmp_path):
    import time

    import pynetdicom.association
    import pynetdicom.dul

    data_dir = DataDir(tmp_path / "data").create()
    db = Database(data_dir.index)
    guard = DiskGuard(lambda: 10**15, 0)
    store = InstanceStore(data_dir, db, guard, series=SeriesIndex(db))
    settings = DicomSettings(port=free_port())
    server = StorageScp(settings, TlsSettings(), store, guard, EventBus(), AgentMetrics())
    server.start()
    try:
        assert pynetdicom.dul.time is server.polling
        assert pynetdicom.association.time is server.polling
        assert send_bytes(server, tmp_path, part10_bytes(ct_instance())) == 0x0000
        assert server.polling._busy_until > time.monotonic()  # the next request is expected
    finally:
        server.stop(drain_timeout_s=2)
        db.close()
    assert pynetdicom.dul.time is time
    assert pynetdicom.association.time is time


def test_receiving_while_a_store_runs_and_not_once_the_association_went_quiet(
    scp, tmp_path, monkeypatch
):
    seen = []
    put_file = scp.store.put_file

    def watched(*args, **kwargs):
        seen.append(scp.receiving())
        return put_file(*args, **kwargs)

    monkeypatch.setattr(scp.store, "put_file", watched)
    assert send_bytes(scp, tmp_path, part10_bytes(ct_instance())) == 0x0000
    assert seen == [True]
    scp._last_store_done -= 60  # as if the last C-STORE was a minute ago
    assert not scp.receiving()


def test_a_stored_file_holds_the_sent_dataset_and_the_index_its_sha256(scp, tmp_path):
    """The lean receive path hashes while it writes: the index's sha256 is the file's, and the
    file is the dataset as sent behind the file meta pynetdicom writes."""
    ds = ct_instance()
    sent = part10_bytes(ds)
    assert send_bytes(scp, tmp_path, sent) == 0x0000
    row = scp.store.instance(ds.SOPInstanceUID)
    stored = scp.store.path_of(row).read_bytes()
    assert row["sha256"] == hashlib.sha256(stored).hexdigest()
    assert row["size"] == len(stored)
    assert dataset_of(stored) == dataset_of(sent)
    received = pydicom.dcmread(io.BytesIO(stored))
    assert received.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert received.SOPInstanceUID == ds.SOPInstanceUID
    assert not list(scp.store.data_dir.incoming.iterdir())  # nothing left behind


def dataset_of(part10: bytes) -> bytes:
    """What follows the preamble and the file meta (its length is in (0002,0000))."""
    meta_length = 12 + int.from_bytes(part10[140:144], "little")
    return part10[132 + meta_length :]
