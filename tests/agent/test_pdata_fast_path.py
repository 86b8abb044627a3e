"""The P-DATA fast path: a C-STORE's middle dataset fragments written straight from their PDU,
the same bytes as pynetdicom's path, the receive limits still applied, and every other PDU
(and every association something else listens to) left to pynetdicom."""

from __future__ import annotations

import struct

import numpy as np
import pydicom
import pytest
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage

from ftlct.agent.dicom import pdata_fast_path
from ftlct.agent.dicom.pdata_fast_path import _limits_of, dataset_fragments
from ftlct.agent.dicom.receive_limits import ReceiveLimits
from ftlct.agent.dicom.scp import StorageScp
from ftlct.agent.events import EventBus
from ftlct.agent.metrics import AgentMetrics
from ftlct.agent.series.series_index import SeriesIndex
from ftlct.agent.settings import DicomSettings, TlsSettings
from ftlct.agent.store.database import Database
from ftlct.agent.store.disk import DiskGuard
from ftlct.agent.store.instance_store import InstanceStore
from ftlct.agent.store.layout import DataDir
from tests.agent.dicom_files import ct_instance, part10_bytes
from tests.support.dicom_peers import raw_file_sending
from tests.support.ports import LOOPBACK, free_port

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

MAX_PDU = 16384  # the agent's: a 512x512 slice then arrives in ~32 PDUs


def pdv(context_id: int, control: int, data: bytes) -> bytes:
    return struct.pack(">LBB", len(data) + 2, context_id, control) + data


# ---------------------------------------------------------------------- which PDUs qualify
def test_middle_dataset_fragments_of_the_message_context_qualify():
    body = pdv(3, 0x00, b"abcd") + pdv(3, 0x00, b"ef")
    assert dataset_fragments(body, 3) == [(6, 10), (16, 18)]
    assert [body[a:b] for a, b in dataset_fragments(body, 3)] == [b"abcd", b"ef"]


@pytest.mark.parametrize(
    "body",
    [
        pdv(3, 0x02, b"last"),  # the last fragment completes the message: pynetdicom's path
        pdv(3, 0x01, b"cmd"),  # a command fragment
        pdv(3, 0x03, b"cmd"),  # the last command fragment
        pdv(5, 0x00, b"other context"),
        pdv(3, 0x00, b"ok") + pdv(3, 0x02, b"last"),  # one PDV of the PDU does not qualify
        pdv(3, 0x00, b"abcd")[:-1],  # a PDV longer than the PDU
        struct.pack(">LBB", 1, 3, 0),  # a PDV length below its own header
        pdv(3, 0x00, b"ok") + b"\x00\x00",  # trailing bytes shorter than a PDV header
        b"",
    ],
)
def test_anything_else_takes_pynetdicoms_path(body):
    assert dataset_fragments(body, 3) is None


class Listened:
    """An association as ``_limits_of`` sees it: its bound notification handlers."""

    def __init__(self, handlers: dict):
        self.handlers = handlers

    def get_handlers(self, event):
        return self.handlers.get(event, [])


def test_only_an_association_the_limits_alone_listen_to_takes_the_fast_path():
    limits = ReceiveLimits(MAX_PDU, 0, DiskGuard(lambda: 10**15, 0), lambda *a: None)
    alone = {evt.EVT_PDU_RECV: [(limits._on_pdu, None)]}
    assert _limits_of(Listened(alone)) is limits
    with_another = {evt.EVT_PDU_RECV: [(limits._on_pdu, None), (print, None)]}
    assert _limits_of(Listened(with_another)) is None
    bytes_listened = alone | {evt.EVT_DATA_RECV: [(print, None)]}
    assert _limits_of(Listened(bytes_listened)) is None
    assert _limits_of(Listened({evt.EVT_PDU_RECV: [(print, None)]})) is None
    assert _limits_of(Listened({})) is None


# ---------------------------------------------------------------------- through a real SCP
def dataset_part(part10: bytes) -> bytes:
    """What follows the File Meta Information (its group length is the first element)."""
    (group_length,) = struct.unpack_from("<L", part10, 140)
    return part10[144 + group_length :]


def large_slice(seed: int = 0) -> bytes:
    ds = ct_instance()
    pixels = np.random.default_rng(seed).integers(0, 4096, (512, 512), dtype=np.uint16)
    ds.Rows, ds.Columns = pixels.shape
    ds.PixelData = pixels.tobytes()
    return part10_bytes(ds)


def start_scp(tmp_path, max_dataset_bytes: int = 0) -> StorageScp:
    data_dir = DataDir(tmp_path / "data").create()
    db = Database(data_dir.index)
    guard = DiskGuard(lambda: 10**15, 0)
    store = InstanceStore(data_dir, db, guard, series=SeriesIndex(db))
    settings = DicomSettings(port=free_port(), max_pdu=MAX_PDU, max_dataset_bytes=max_dataset_bytes)
    server = StorageScp(settings, TlsSettings(), store, guard, EventBus(), AgentMetrics())
    server.start()
    return server


def send(scp: StorageScp, path) -> tuple[int | None, bool]:
    """C-STORE the file's bytes unchanged; (status or None, whether the association ended)."""
    ae = AE(ae_title="SCU")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate(LOOPBACK, scp.settings.port, ae_title="FTLCT")
    assert assoc.is_established
    try:
        with raw_file_sending():
            status = assoc.send_c_store(path)
        ended = assoc.is_aborted or not assoc.is_established
        return (int(status.Status) if "Status" in status else None), ended
    finally:
        if assoc.is_established:
            assoc.release()


def test_a_slice_in_many_pdus_is_stored_byte_for_byte_through_the_fast_path(tmp_path):
    scp = start_scp(tmp_path)
    try:
        data = large_slice()
        path = tmp_path / "slice.dcm"
        path.write_bytes(data)
        before = pdata_fast_path.written.fragments
        status, aborted = send(scp, path)
        assert (status, aborted) == (0x0000, False)
        written = pdata_fast_path.written.fragments - before
        assert written >= len(data) // MAX_PDU - 2  # all but the first and the last PDU
        (row,) = scp.store.db.query("SELECT path FROM instances")
        stored = (scp.store.data_dir.root / row["path"]).read_bytes()
        assert dataset_part(stored) == dataset_part(data)  # the agent writes its own meta
        assert pydicom.dcmread(scp.store.data_dir.root / row["path"]).Rows == 512
    finally:
        scp.stop(drain_timeout_s=2)
        scp.store.db.close()


def test_the_size_cap_still_aborts_a_dataset_arriving_through_the_fast_path(tmp_path):
    scp = start_scp(tmp_path, max_dataset_bytes=100_000)
    try:
        path = tmp_path / "slice.dcm"
        path.write_bytes(large_slice())
        before = pdata_fast_path.written.bytes
        status, _ = send(scp, path)
        assert status is None  # no response: the A-ABORT came while the dataset arrived
        assert 0 < pdata_fast_path.written.bytes - before <= 100_000  # nothing past the cap
        assert scp.store.db.scalar("SELECT count(*) FROM instances") == 0
        (kept,) = scp.store.db.query("SELECT outcome, reason FROM quarantine")
        assert kept["outcome"] == "aborted" and "max_dataset_bytes" in kept["reason"]
    finally:
        scp.stop(drain_timeout_s=2)
        scp.store.db.close()


def test_the_switch_is_undone_when_the_scp_stops(tmp_path):
    from pynetdicom.dul import DULServiceProvider

    original = DULServiceProvider._read_pdu_data
    scp = start_scp(tmp_path)
    assert DULServiceProvider._read_pdu_data is pdata_fast_path.read_pdu_data
    scp.stop(drain_timeout_s=2)
    scp.store.db.close()
    assert DULServiceProvider._read_pdu_data is original
